"""What training computes once and keeps in the run folder: ArcFace embeddings of the images (stage 2) and
VAE latents of the clean images (``--cache-latents``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mgfr_cli.files import resolved


def identity_cache(dataset, identity_path: Path, device, run_dir: Path, accelerator) -> None:
    """ArcFace embeddings of every image, computed once by the main process (on its own GPU), written to
    ``RUN_DIR/identity-cache.safetensors`` and read by the others."""
    from safetensors.torch import load_file

    from mgfr_cli.faces.identity import IdentityEncoder

    path = run_dir / "identity-cache.safetensors"
    if accelerator.is_main_process:
        dataset.prepare_identity(IdentityEncoder(identity_path, str(device)))
        run_dir.mkdir(parents=True, exist_ok=True)
        _save({str(i): torch.from_numpy(e).contiguous() for i, e in dataset.id_embeddings.items()}, path)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        dataset.id_embeddings = {int(k): v.numpy() for k, v in load_file(path).items()}


def latent_cache(dataset, base, scaling, run_dir: Path, dtype, device, accelerator, say=print,
                 base_mark: str = "") -> torch.Tensor:
    """``(2N, 4, h, w)`` VAE latents of every dataset image, then of every image flipped (``index + N``),
    computed by the main process into ``RUN_DIR/latent-cache.safetensors`` and read by the others. Each image's
    rows are keyed by its path, size and modification time (and the resolution, scaling and the base's weights,
    ``base_mark``: another VAE's latents are not this one's): a later run
    reuses the rows of unchanged images and encodes again only the images that changed, saying how many."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    path = run_dir / "latent-cache.safetensors"
    keys = [_image_key(p, dataset.resolution, scaling) + base_mark for p in dataset.images]
    n = len(keys)
    if accelerator.is_main_process:
        old, old_keys = None, []
        if path.is_file():
            try:
                with safe_open(str(path), "pt") as f:
                    old_keys = json.loads((f.metadata() or {}).get("keys", "[]"))
                old = load_file(path)["latents"]
            except Exception:  # noqa: BLE001 - a damaged or old-format cache is recomputed
                old, old_keys = None, []
        where = {k: i for i, k in enumerate(old_keys)} if old is not None else {}
        todo = [i for i, k in enumerate(keys) if k not in where]
        if old is not None and todo:
            say(f"latent cache: {len(todo)} of {n} image(s) new or changed since it was made; encoding those again")
        rows = [None] * (2 * n)
        m = len(old_keys)
        for i, k in enumerate(keys):
            if k in where:
                rows[i], rows[i + n] = old[where[k]], old[where[k] + m]
        with torch.no_grad():
            for flip in (False, True):
                for start in range(0, len(todo), 16):
                    chunk = todo[start : start + 16]
                    x = torch.stack([dataset.clean_tensor(i, flip) for i in chunk])
                    for i, z in zip(chunk, encode_latents(base, x, scaling, device, dtype).float().cpu()):
                        rows[i + (n if flip else 0)] = z
        latents = torch.stack(rows)
        if todo or len(old_keys) != n:
            run_dir.mkdir(parents=True, exist_ok=True)
            _save({"latents": latents.contiguous()}, path, metadata={"keys": json.dumps(keys)})
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        latents = load_file(path)["latents"]
    return latents.to(device, dtype)


def _image_key(path: Path, resolution: int, scaling: float) -> str:
    st = Path(path).stat()  # by resolved path: `--data photos` and `--data ../x/photos` (a resume elsewhere) agree
    return f"{resolved(path)}|{st.st_size}|{st.st_mtime_ns}|{resolution}|{scaling}|flip"


def encode_latents(base, images, scaling, device, dtype):
    return base.vae.encode(images.to(device, dtype)).latent_dist.mode() * scaling


def _save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """``tensors`` into ``path`` whole or not at all (a full disk: the partial file removed, one line said)."""
    from safetensors.torch import save_file

    from mgfr_cli.files import disk_errors

    tmp = path.with_name(path.name + ".tmp")
    try:
        with disk_errors(path):
            save_file(tensors, tmp, metadata=metadata)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
