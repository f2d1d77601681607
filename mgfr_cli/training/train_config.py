"""The training config: every knob of ``mgfr train`` as one frozen dataclass, validated by pydantic.

Defaults < YAML file < command-line flags. Types are strict (``learning_rate: fast`` or ``true`` for a
number is an error), numbers must be finite and in range (``ema_decay: 1.5``, ``learning_rate: -1``,
``nan`` are errors), names are checked (``lr_schedule`` must be one of diffusers' schedules), and every
error is one line naming the file and the key.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from mgfr_cli.configs import check_keys, read_yaml
from mgfr_cli.training.data import PromptConfig
from mgfr_cli.training.degrade import DegradeConfig
from mgfr_cli.errors import ConfigError

STRICT = ConfigDict(strict=True, extra="forbid")
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _schedule_name(name: str) -> str:
    from diffusers.optimization import SchedulerType

    names = [s.value for s in SchedulerType if s.value != "piecewise_constant"]  # that one needs step rules
    if name not in names:
        raise ValueError(f"must be one of {', '.join(names)}")
    return name


@dataclass(frozen=True, config=STRICT)
class TrainConfig:
    stage: Literal[1, 2] = 1
    model: str = "mgfr-sd21"  # architecture config (models/*.yaml) for the adapter knobs and resolution
    batch_size: Positive = 4  # per process
    grad_accum: Positive = 1
    learning_rate: Rate = 1e-5
    lca_learning_rate: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0  # stage 2: > 0 also fine-tunes LCA (ours)
    lr_warmup_steps: NonNegative = 500
    lr_schedule: Annotated[str, AfterValidator(_schedule_name)] = "constant_with_warmup"  # diffusers get_scheduler
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-2
    max_steps: Positive = 100_000
    grad_clip: Rate = 1.0
    ema_decay: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.999
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # Accelerate
    gradient_checkpointing: bool = False  # the adapter's blocks
    unet_gradient_checkpointing: bool = False  # the frozen UNet's too: its decoder activations are what the
    # backward into the residuals would otherwise keep (memory for compute)
    checkpoint_every: Positive = 2_000
    max_megapixels: Rate = 100.0  # training images larger than this are listed as unreadable, before the first step
    keep_checkpoints: NonNegative = 3  # complete checkpoints kept (the newest always); 0: keep every one
    log_every: Positive = 10
    sample_every: NonNegative = 0  # sample grids to TensorBoard every N steps (0: never)
    sample_steps: Positive = 20
    cache_latents: bool = False  # encode every clean image (targets, references) with the VAE once, up front
    num_workers: NonNegative = 2
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    use_identity: bool = True  # stage 2: ArcFace identity tokens into RCA (needs arcface_w600k_r50.onnx)
    hflip: Annotated[float, Field(ge=0, le=1)] = 0.5  # horizontal flip of the face (the reference flips on its own)
    ref_drop: Annotated[float, Field(ge=0, le=1)] = 0.1  # stage 2 with LCA fine-tuned: reference dropped, so
    # restoring without references does not drift
    degradation: DegradeConfig = DegradeConfig()
    prompts: PromptConfig = PromptConfig()


_NESTED = {"degradation": DegradeConfig, "prompts": PromptConfig}


def _pairs(section: dict) -> dict:
    """YAML lists as tuples (the dataclasses hold ranges as pairs)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def one_line(exc: ValidationError, where: str) -> ConfigError:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    got = e.get("input")
    msg = e["msg"].removeprefix("Value error, ")
    shown = "" if isinstance(got, dict) or "got" in msg else f", got {got!r}"[:80]
    return ConfigError(f"{where}: key {loc!r}: {msg}{shown}")


def load_train_config(path: Path | None, overrides: dict) -> TrainConfig:
    """Defaults < YAML file < command-line overrides (``None`` values are not overrides)."""
    data = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "training config"
    check_keys(data, {f.name for f in fields(TrainConfig)}, where)
    kwargs = dict(data)
    for name, cls in _NESTED.items():
        if name in kwargs:
            if not isinstance(kwargs[name], dict):
                raise ConfigError(f"{where}: key {name!r} must be a mapping")
            check_keys(kwargs[name], {f.name for f in fields(cls)}, f"{where}: {name}")
            try:
                kwargs[name] = cls(**_pairs(kwargs[name]))
            except ValidationError as exc:
                raise one_line(exc, f"{where}: {name}") from None
    try:
        cfg = TrainConfig(**kwargs)
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise one_line(exc, where) from None
    return cfg


RUN_CONFIG_MARK = "# mgfr train: this run's config, flags applied (--resume continues with it)\n"


def save_config(cfg: TrainConfig, path: Path) -> None:
    import yaml

    from mgfr_cli.files import atomic_write_bytes

    data = asdict(cfg)
    for k in _NESTED:
        data[k] = {kk: list(v) if isinstance(v, tuple) else v for kk, v in data[k].items()}
    atomic_write_bytes(path, (RUN_CONFIG_MARK + yaml.safe_dump(data, sort_keys=False)).encode())


def is_run_config(path: Path) -> bool:
    """A run's record of its config, as :func:`save_config` writes it: marked; written before the mark, the copy
    its checkpoints hold, or every key."""
    import yaml

    try:
        text = Path(path).read_text(errors="replace")[: 1 << 20]
        if text.startswith(RUN_CONFIG_MARK):
            return True
        if any(c.read_text(errors="replace")[: 1 << 20] == text
               for c in Path(path).parent.glob("checkpoints/step-*/config.yaml")):
            return True
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and set(data) == {f.name for f in fields(TrainConfig)}


def run_config_path(run_dir: Path) -> tuple[Path, str]:
    """Where a run keeps its config: ``RUN_DIR/config.yaml``, unless that is the user's own file (a config kept
    beside the run, maybe the one given to --config: never replaced), then ``config-mgfr.yaml``; with a note."""
    from mgfr_cli.ownership import own_or_free

    return own_or_free(Path(run_dir) / "config.yaml", is_run_config)


# Knobs that change how far, how often or how fast a run goes, not what it learns: a resume may change them.
RESUMABLE = ("max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "sample_every", "sample_steps",
             "num_workers", "cache_latents", "max_megapixels")


def resume_config(saved: Path, path: Path | None, overrides: dict, world: int = 1,
                  run_world: int | None = None) -> tuple[TrainConfig, list[str]]:
    """The config a ``--resume`` continues with: the run's own (``RUN_DIR/config.yaml``), not the defaults, with
    what this command sets in it (``path``'s keys, flags given). Changes to :data:`RESUMABLE` knobs are applied
    and returned as notes; any other change would make the resumed run a different run than the one stopped,
    and is refused with one line naming each. A different stage is left to the trainer's own message.

    The batch is judged whole: ``batch_size`` x ``grad_accum`` x processes (``world`` now, ``run_world`` when the
    run's last checkpoint was written; None: as now) must stay what it was, since each step takes the samples
    of its positions (so 2 GPUs with batch 4 may resume as 1 with batch 8, and not as 1 with batch 4)."""
    run = load_train_config(saved, {})
    asked = load_train_config(path, overrides)
    if asked.stage != run.stage:
        return asked, []
    given = set(read_yaml(path)) if path is not None else set()
    given |= {k for k, v in overrides.items() if v is not None}
    changed = {k: (getattr(run, k), getattr(asked, k)) for k in sorted(given) if getattr(asked, k) != getattr(run, k)}
    refused = [f"{k} {new!r} (the run has {old!r})" for k, (old, new) in changed.items()
               if k not in RESUMABLE + ("batch_size", "grad_accum")]
    bs, ga = (changed.get(k, (None, getattr(run, k)))[1] for k in ("batch_size", "grad_accum"))
    before, now = run.batch_size * run.grad_accum * (run_world or world), bs * ga * world
    if now != before:
        fix = f", so give --batch-size {before // (ga * world)}" if before % (ga * world) == 0 else ""
        refused.append(f"the samples of a step to {now} (batch_size {bs} x grad_accum {ga} x {world} process(es); "
                       f"the run took {before} = {run.batch_size} x {run.grad_accum} x {run_world or world}{fix})")
    if refused:
        raise ConfigError(f"{saved.parent}: --resume continues the run as it was configured, and this changes "
                          f"{'; '.join(refused)}. Resume without the change, or start a new run folder")
    cfg = replace(run, **{k: new for k, (_, new) in changed.items()})
    return cfg, [f"--resume: {k} is now {new!r} (the run had {old!r})" for k, (old, new) in changed.items()]
