"""Training checkpoints without pickles: what a resume needs, written atomically, read back or skipped.

``RUN_DIR/checkpoints/step-N/``: ``state/adapter.safetensors`` and ``state/ema.safetensors`` (tensors),
``state/optimizer.pt`` (tensors and numbers only, loaded with ``weights_only=True``), ``step.json`` (counters,
LR scheduler, fp16 loss scale), ``adapter/`` (the EMA weights as a ``save_pretrained`` folder). A damaged
newest checkpoint is skipped for the one before it; a diverged run (non-finite weights) writes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mgfr_cli.errors import OutputError, WeightsError
from mgfr_cli.files import disk_errors
from mgfr_cli.ownership import is_mgfr_adapter, replace_folder, temp_folder_beside


def is_checkpoint(folder: Path) -> bool:
    return (Path(folder) / "step.json").is_file() and (Path(folder) / "state").is_dir()


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``checkpoints/step-N`` folders, oldest first (temporary ``.tmp`` ones left out)."""
    return sorted((p for p in run_dir.glob("checkpoints/step-*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    steps = [p for p in checkpoints(run_dir) if (p / "state").is_dir() and (p / "step.json").is_file()]
    return steps[-1] if steps else None


def save_ema_adapter(adapter, ema, folder: Path) -> None:
    """EMA weights into a ``save_pretrained`` folder, written beside and renamed into place."""
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not all(bool(torch.isfinite(p).all()) for p in [*params, *ema.shadow_params]):
        # a diverged run (NaN/inf weights) must not leave a checkpoint that looks usable
        raise WeightsError(f"{folder}: training diverged (non-finite weights); not written. Lower learning_rate or "
                           f"resume from an earlier checkpoint")
    tmp = temp_folder_beside(folder)
    ema.store(params)
    ema.copy_to(params)
    try:
        with disk_errors(folder):
            adapter.save_pretrained(tmp, safe_serialization=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        ema.restore(params)
    replace_folder(tmp, folder, is_mgfr_adapter, "an adapter")


def write_checkpoint(accelerator, adapter, optimizer, lr_scheduler, ema, run_dir: Path, step: int) -> None:
    """Everything a resume needs, without pickles: safetensors for tensors, JSON for counters, and the
    optimiser state (tensors and numbers only, so it loads with ``weights_only=True``). Written to a
    temporary folder and renamed; processes hold identical copies under DDP, so the main one writes."""
    from safetensors.torch import save_file

    from mgfr_cli.training.train_config import run_config_path

    if accelerator.is_main_process:
        final = run_dir / "checkpoints" / f"step-{step}"
        tmp = temp_folder_beside(final)
        try:
            (tmp / "state").mkdir(parents=True)
            with disk_errors(tmp / "state"):
                save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, tmp / "state" / "adapter.safetensors")
                save_file({str(i): p.detach().contiguous() for i, p in enumerate(ema.shadow_params)},
                          tmp / "state" / "ema.safetensors")
            torch.save(optimizer.state_dict(), tmp / "state" / "optimizer.pt")
            meta = {"step": step, "processes": accelerator.num_processes, "lr_scheduler": lr_scheduler.state_dict(),
                    "ema": {"optimization_step": ema.optimization_step, "decay": ema.decay},
                    # fp16's loss scale: without it a resumed run restarts at 65536 and skips steps finding it again
                    "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None}
            (tmp / "step.json").write_text(json.dumps(meta, default=str))
            save_ema_adapter(adapter, ema, tmp / "adapter")
            if (saved := run_config_path(run_dir)[0]).is_file():
                shutil.copy(saved, tmp / "config.yaml")
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            # a full disk: no partial checkpoint left, one line
            if isinstance(exc, OSError):
                why = exc.strerror or str(exc).splitlines()[0]
                raise OutputError(f"{run_dir}: cannot write checkpoint step-{step} ({why}); nothing partial was "
                                  f"left, earlier checkpoints are kept") from None
            raise
        replace_folder(tmp, final, is_checkpoint, "a checkpoint")
    accelerator.wait_for_everyone()


def run_processes(run_dir: Path) -> int | None:
    """How many processes wrote the run's latest checkpoint (None when it does not say: an older checkpoint)."""
    ckpt = latest_checkpoint(run_dir)
    try:
        n = json.loads((ckpt / "step.json").read_text()).get("processes") if ckpt is not None else None
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and n >= 1 else None


def resume_latest(run_dir: Path, adapter, optimizer, lr_scheduler, ema, accelerator) -> int:
    """Load the newest checkpoint that loads; a damaged one (truncated file, missing key) is skipped, saying so."""
    problems = []
    for ckpt in reversed(checkpoints(run_dir)):
        try:
            step = load_state(ckpt, adapter, optimizer, lr_scheduler, ema, accelerator)
        except WeightsError as exc:
            problems.append(str(exc))
            continue
        if problems:
            accelerator.print(f"resuming from {ckpt.name}: newer checkpoint(s) are damaged ({'; '.join(problems)})")
        return step
    raise WeightsError(f"{run_dir}: no checkpoint can be resumed from ({'; '.join(problems) or 'none'})")


def load_state(ckpt: Path, adapter, optimizer, lr_scheduler, ema, accelerator=None) -> int:
    from safetensors.torch import load_file

    try:
        adapter.load_state_dict(load_file(ckpt / "state" / "adapter.safetensors"))
        shadow = load_file(ckpt / "state" / "ema.safetensors")
        optimizer.load_state_dict(torch.load(ckpt / "state" / "optimizer.pt", map_location="cpu", weights_only=True))
        meta = json.loads((ckpt / "step.json").read_text())
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(shadow[str(i)].to(p.device))
        ema.optimization_step = meta["ema"]["optimization_step"]
        lr_scheduler.load_state_dict(meta["lr_scheduler"])
        step = int(meta["step"])
    except Exception as exc:  # noqa: BLE001 - truncated safetensors, 0-byte pickles, missing keys: all unusable
        raise WeightsError(f"{ckpt}: cannot resume from this checkpoint ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return step
