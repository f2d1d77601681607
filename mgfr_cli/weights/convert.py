"""Public weights into mgfr's layout: DiffBIR's IRControlNet as the LCA of an adapter (docs/design.md §7).

DiffBIR's SD-2.1 ControlNets (``v2.pth``, ``v1_face.pth``) are an SD-2.1 encoder copy whose input conv
takes ``[z_t, z_cond]``, with 12 skip zero-convs and one middle zero-conv: exactly mgfr's LCA. The key
mapping below is written from the two layouts (``tests/fixtures/diffbir/`` holds the verified table and
a numeric golden file); every key must map and every shape must fit, or the file is refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from mgfr_cli.errors import WeightsError

# Known DiffBIR releases: what each was trained for. v2.1 has v2's keys and shapes but was trained on a
# zero-terminal-SNR v-prediction base, so its tensors cannot tell it apart: refuse it by name and hash.
DIFFBIR_RELEASES = {
    "diffbir-v2": {"file": "v2.pth", "stage": 1, "prediction_type": "epsilon", "base": "sd21-base"},
    "diffbir-v1-face": {"file": "v1_face.pth", "stage": 1, "prediction_type": "epsilon", "base": "sd21-base"},
}
INCOMPATIBLE = {
    "diffbir-v2.1": ("DiffBIR_v2.1.pt", "DiffBIR v2.1 was trained for a zero-terminal-SNR v-prediction SD 2.1 base "
                     "(sd2.1-base-zsnr), not for SD 2.1 base (epsilon): its residuals would be misread; use "
                     "diffbir-v2 (mgfr weights fetch diffbir-v2)"),
}
WRAPPERS = ("state_dict", "params_ema", "params", "model", "controlnet")
PREFIXES = ("module.", "control_model.", "controlnet.")

_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _resnet_key(rest: str, target: str) -> str | None:
    for src, dst in _RESNET.items():
        if rest.startswith(src + "."):
            return f"{target}.{dst}.{rest[len(src) + 1:]}"
    return None


def diffbir_to_mgfr_key(key: str, levels: int, layers: int) -> str | None:
    """The ``MgfrAdapter`` key of one DiffBIR ControlNet key, or None when it has no place in the LCA.

    ``levels``/``layers``: the UNet's number of resolution levels and layers per block. DiffBIR's
    ``input_blocks`` are numbered ``0`` (input conv), then per level ``layers`` blocks (resnet ``.0``,
    transformer ``.1``) and, except after the last level, one downsampler.
    """
    parts = key.split(".")
    if parts[0] == "time_embed" and parts[1] in ("0", "2"):
        return f"lca.time_embedding.linear_{1 if parts[1] == '0' else 2}.{'.'.join(parts[2:])}"
    if parts[0] == "zero_convs" and len(parts) == 4 and parts[2] == "0":
        return f"lca_down_zero.{parts[1]}.{parts[3]}"
    if parts[0] == "middle_block_out" and len(parts) == 3 and parts[1] == "0":
        return f"lca_mid_zero.{parts[2]}"
    if parts[0] == "middle_block" and len(parts) > 2:
        rest = ".".join(parts[2:])
        if parts[1] == "1":
            return f"lca.mid_block.attentions.0.{rest}"
        if parts[1] in ("0", "2"):
            return _resnet_key(rest, f"lca.mid_block.resnets.{int(parts[1]) // 2}")
        return None
    if parts[0] != "input_blocks" or len(parts) < 4 or not parts[1].isdigit():
        return None
    k, sub, rest = int(parts[1]), parts[2], ".".join(parts[3:])
    if k == 0:
        return f"lca.conv_in.{rest}" if sub == "0" else None
    level, j = divmod(k - 1, layers + 1)
    if level >= levels:
        return None
    if j == layers:  # the downsampler closing this level
        if level == levels - 1 or sub != "0" or not rest.startswith("op."):
            return None
        return f"lca.down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
    if sub == "0":
        return _resnet_key(rest, f"lca.down_blocks.{level}.resnets.{j}")
    if sub == "1":
        return f"lca.down_blocks.{level}.attentions.{j}.{rest}"
    return None


def unwrap_state(state, where: str) -> dict:
    """A bare ``{key: tensor}`` dict from the usual wrappers (``state_dict``, ``params_ema``, ``module.``)."""
    import torch

    for _ in range(2):  # e.g. {"state_dict": {...}, "epoch": ...}, or {"params_ema": {...}}
        if isinstance(state, dict):
            inner = next((state[w] for w in WRAPPERS if isinstance(state.get(w), dict)), None)
            if inner is not None:
                state = inner
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where}: not a state dict of tensors (nor one wrapped in {', '.join(WRAPPERS)})")
    out = {}
    for key, value in state.items():
        for p in PREFIXES:
            key = key.removeprefix(p)
        out[key] = value
    return out


def check_values(state: dict, where: str) -> None:
    """Right keys and shapes are not enough: integer, boolean or NaN tensors are no trained weights."""
    import torch

    for key, value in state.items():
        if not value.is_floating_point():
            raise WeightsError(f"{where}: {key} holds {str(value.dtype).removeprefix('torch.')} values, not floating-point "
                               f"weights; refused")
        if not bool(torch.isfinite(value).all()):
            raise WeightsError(f"{where}: {key} holds NaN or infinite values; refused (a damaged or diverged checkpoint)")


def load_checkpoint(path: Path) -> dict:
    """``torch.load(weights_only=True)`` of a ``.pth``/``.ckpt``/``.pt``, or a ``.safetensors`` file."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path}: refused to load, the file holds more than weights ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, MemoryError, OverflowError) as exc:
        raise WeightsError(f"{path}: not a readable weight file ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None
    except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError (a header that lies) derives from Exception
        if type(exc).__name__ != "SafetensorError":
            raise
        raise WeightsError(f"{path}: not a readable weight file ({(str(exc).splitlines() or ['bad header'])[0]})") from None
    return unwrap_state(state, str(path))


def lca_template(unet_config: dict):
    """An ``MgfrAdapter(use_reference=False)`` of the base UNet's shape on the meta device (no memory)."""
    import torch

    from mgfr_cli.model.adapter import UNET_ENCODER_KEYS, MgfrAdapter

    cfg = {k: unet_config[k] for k in UNET_ENCODER_KEYS if k in unet_config}  # absent keys: SD 2.1 defaults
    with torch.device("meta"):
        return MgfrAdapter(**cfg, use_reference=False)


def map_diffbir_state(state: dict, adapter, where: str) -> dict:
    """DiffBIR ControlNet tensors renamed onto ``adapter``'s LCA; refuses anything that does not fill it exactly."""
    cfg = adapter.config
    levels, layers = len(cfg.block_out_channels), cfg.layers_per_block
    if any(k.startswith("input_hint_block.") for k in state):
        raise WeightsError(f"{where}: has an image hint block (input_hint_block.*): an image-conditioned ControlNet, "
                           f"not DiffBIR's latent-conditioned IRControlNet; it cannot be an LCA")
    conv = state.get("input_blocks.0.0.weight")
    if conv is not None and conv.ndim == 4 and conv.shape[1] != 2 * cfg.in_channels:
        raise WeightsError(f"{where}: input conv takes {conv.shape[1]} channels, the LCA takes "
                           f"{2 * cfg.in_channels} ([z_t, z_cond]): not a latent-conditioned IRControlNet")
    own = adapter.state_dict()
    mapped, extra = {}, []
    for key, value in state.items():
        target = diffbir_to_mgfr_key(key, levels, layers)
        if target is None or target not in own:
            extra.append(key)
            continue
        if tuple(value.shape) != tuple(own[target].shape):
            raise WeightsError(f"{where}: {key} has shape {tuple(value.shape)}, the LCA's {target} needs "
                               f"{tuple(own[target].shape)} (a ControlNet for another base?)")
        mapped[target] = value
    missing = sorted(set(own) - set(mapped))
    if extra:
        raise WeightsError(f"{where}: {len(extra)} key(s) with no place in the LCA, e.g. {extra[0]}")
    if missing:
        raise WeightsError(f"{where}: {len(missing)} LCA tensor(s) not in the file, e.g. {missing[0]} "
                           f"({len(state)} keys read; a truncated or different checkpoint?)")
    return mapped


def check_release(path: Path, source: str, known_bad: dict[str, str]) -> None:
    """Refuse files known not to fit an SD 2.1 base: DiffBIR v2.1 by its file name and by its recorded hash."""
    from mgfr_cli.weights.files import sha256_of

    name = Path(path).name.lower()
    for entry, (file, why) in INCOMPATIBLE.items():
        if name == file.lower() or "v2.1" in name or "v2_1" in name:
            raise WeightsError(f"{path}: looks like {entry} ({file}). {why}")
    if source not in DIFFBIR_RELEASES:
        raise WeightsError(f"--source {source!r}: choose one of {', '.join(DIFFBIR_RELEASES)}")
    if known_bad:
        digest = sha256_of(path)
        if digest in known_bad:
            entry = known_bad[digest]
            raise WeightsError(f"{path}: its SHA-256 is that of {entry} ({INCOMPATIBLE[entry][0]}). {INCOMPATIBLE[entry][1]}")


def convert_diffbir(src: Path, out: Path, *, unet_config: dict, source: str = "diffbir-v2",
                    known_bad: dict[str, str] | None = None, base_fingerprint: str | None = None,
                    model_root: Path | None = None) -> Path:
    """Write ``out/`` (``config.json`` + safetensors): an LCA-only adapter holding ``src``'s weights.

    ``out`` must be new, empty, or an adapter mgfr wrote; it never is (or holds) ``src``, the model root or
    the working folder. The adapter is written into a fresh hidden folder beside it and renamed into place."""
    import torch

    from mgfr_cli.files import disk_errors
    from mgfr_cli.ownership import is_empty_dir, is_mgfr_adapter, refuse_protected, replace_folder, temp_folder_beside

    out = Path(out)
    refuse_protected(out, {"the file being converted": src, "the model root": model_root,
                           "the working folder": Path.cwd()})
    if out.exists() and not (is_empty_dir(out) or is_mgfr_adapter(out)):
        raise WeightsError(f"-o {out}: exists and is not an empty folder or an adapter mgfr wrote; nothing was "
                           f"changed: choose a new folder")
    check_release(src, source, known_bad or {})
    template = lca_template(unet_config)
    mapped = map_diffbir_state(load_checkpoint(src), template, str(src))
    check_values(mapped, str(src))
    info = DIFFBIR_RELEASES[source]
    from mgfr_cli.model.adapter import MgfrAdapter

    cfg = {k: v for k, v in template.config.items() if not k.startswith("_")}
    cfg.update(source=source, stages_trained=[info["stage"]], use_identity=False,
               prediction_type=info["prediction_type"], base_fingerprint=base_fingerprint)
    adapter = MgfrAdapter.from_config(cfg)
    adapter.load_state_dict({k: v.to(torch.float32) for k, v in mapped.items()}, strict=True)
    tmp = temp_folder_beside(out)
    try:
        with disk_errors(out):
            adapter.save_pretrained(tmp, safe_serialization=True)
        (tmp / "conversion.json").write_text(json.dumps({"source": source, "from": str(src), "tensors": len(mapped)}, indent=1))
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out, is_mgfr_adapter, "an adapter")
    return out
