"""Assembling a restoring pipeline from files: the adapter folder (or a training run's newest), checked against
the base it will drive, then base + adapter (+ ArcFace, cleaner, recogniser) as :class:`MgfrPipeline`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mgfr_cli.errors import WeightsError
from mgfr_cli.model.adapter import MgfrAdapter
from mgfr_cli.model.pipeline import MgfrPipeline
from mgfr_cli.model.profiles import check_base, profile_of

ADAPTER_WEIGHTS = "diffusion_pytorch_model.safetensors"


def find_adapter_dir(path: Path) -> Path:
    """An adapter folder (``config.json`` + safetensors), or the newest one in a training run folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for candidate in (path / "adapter", path / "final" / "adapter"):
        if (candidate / "config.json").is_file():
            return candidate
    steps = sorted(path.glob("checkpoints/step-*/adapter/config.json"), key=lambda p: int(p.parts[-3].split("-")[1]))
    if steps:
        return steps[-1].parent
    raise WeightsError(f"{path}: no adapter checkpoint there (expected config.json + {ADAPTER_WEIGHTS}, or a "
                       f"training run folder from `mgfr train`, or a converted DiffBIR LCA from "
                       f"`mgfr weights convert diffbir`)")


def load_adapter(path: Path, unet=None, scheduler_config: dict | None = None) -> MgfrAdapter:
    """Load an adapter checkpoint and check that it fits ``unet``'s encoder and the base's objective."""
    folder = find_adapter_dir(path)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise WeightsError(f"{folder}: missing {ADAPTER_WEIGHTS} beside config.json")
    try:
        adapter = MgfrAdapter.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{folder}: cannot load the adapter ({str(exc).splitlines()[0]})") from None
    if unet is not None:
        for key in ("block_out_channels", "cross_attention_dim", "layers_per_block", "in_channels"):
            a, u = adapter.config[key], unet.config[key]
            if list(np.atleast_1d(a)) != list(np.atleast_1d(u)):
                raise WeightsError(f"{folder}: adapter {key}={a} does not fit the base UNet's {key}={u} "
                                   f"(was it trained on another base?)")
    if scheduler_config is not None:
        adapter.base_notes = check_base(adapter.config, scheduler_config, str(folder), unet)
    return adapter


def build_pipeline(base_path: Path, checkpoint: Path, *, identity_path: Path | None, device: str, dtype: torch.dtype,
                   cleaner_path: Path | None = None, recogniser_path: Path | None = None) -> MgfrPipeline:
    """Load base + adapter (+ ArcFace where the adapter was trained with it, + the cleaner) for restoring."""
    from mgfr_cli.model.base import load_base
    from mgfr_cli.faces.identity import IdentityEncoder

    base = load_base(base_path)
    adapter = load_adapter(checkpoint, base.unet, base.scheduler_config)
    profile = profile_of(adapter.config)
    identity = None
    if profile.uses_identity and adapter.config.get("use_identity"):
        if identity_path is None or not identity_path.is_file():
            raise WeightsError(f"missing weights: {identity_path} (the adapter {find_adapter_dir(checkpoint)} was trained "
                               f"with ArcFace identity tokens; get it with: mgfr weights fetch arcface)")
    if profile.uses_identity and identity_path is not None and identity_path.is_file():
        identity = IdentityEncoder(identity_path, device)
    cleaner = None
    if cleaner_path is not None:
        from mgfr_cli.model.cleaner import Cleaner

        cleaner = Cleaner(cleaner_path, device)
    pipeline = MgfrPipeline(base, adapter, identity=identity, device=device, dtype=dtype, cleaner=cleaner)
    if recogniser_path is not None and Path(recogniser_path).is_file():
        from mgfr_cli.model.recogniser import Recogniser

        pipeline.recogniser = Recogniser.load(recogniser_path, device, dtype)
    pipeline.notes = list(getattr(adapter, "base_notes", []))
    return pipeline
