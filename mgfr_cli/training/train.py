"""Two-stage MGFR training with Accelerate (docs/design.md §4).

Stage 1 trains LCA (the low-quality branch) with attribute prompts and negative-quality samples;
stage 2 trains RLF, RCA, the exchange convs and the identity projector on identity-grouped data,
starting from a stage-1 checkpoint. The base model (UNet, VAE, text encoder) stays frozen, in half
precision on GPU. Run folder layout::

    RUN_DIR/config.yaml                      the config used (flags applied; config-mgfr.yaml beside a config.yaml
                                             of the user's, which is never replaced)
    RUN_DIR/checkpoints/step-N/state/        adapter, EMA and optimiser tensors; step.json: counters, LR
                                             scheduler and fp16 loss-scaler state (no RNG: every random draw
                                             is seeded by the sample's position, so none needs saving)
    RUN_DIR/checkpoints/step-N/adapter/      EMA adapter weights (safetensors) + config.json
    RUN_DIR/adapter/                         the final EMA adapter: what `mgfr restore --checkpoint RUN_DIR` loads
    RUN_DIR/logs/                            TensorBoard
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from mgfr_cli.configs import load_model_config
from mgfr_cli.training.data import FaceDataset, PositionSampler
from mgfr_cli.errors import InputError, WeightsError
from mgfr_cli.training.caches import encode_latents, identity_cache, latent_cache
from mgfr_cli.training.checkpoints import latest_checkpoint, resume_latest, save_ema_adapter, write_checkpoint
from mgfr_cli.training.run_folder import (RunLock, check_base, check_run_folder, check_writable, prune_checkpoints,
                                         record_base)
from mgfr_cli.training.train_config import TrainConfig, run_config_path, save_config


def train(cfg: TrainConfig, *, base_path: Path, data_dir: Path, run_dir: Path, init: Path | None = None,
          resume: bool = False, identity_path: Path | None = None,
          on_step: Callable[[int, float, float], None] | None = None) -> Path:
    """Train one stage; returns the final adapter folder. ``on_step(step, loss, samples_per_s)`` reports progress."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    check_writable(run_dir)
    _check_resume(cfg, run_dir, resume)
    lock = RunLock(run_dir) if os.environ.get("RANK", "0") == "0" else None  # one training per run folder
    try:
        return _train(cfg, base_path=base_path, data_dir=data_dir, run_dir=run_dir, init=init, resume=resume,
                      identity_path=identity_path, on_step=on_step)
    finally:
        if lock is not None:
            lock.release()


def _check_resume(cfg: TrainConfig, run_dir: Path, resume: bool) -> None:
    """A resume of another stage's run is not a damaged checkpoint: say what it is and what to run."""
    import yaml

    saved = run_config_path(run_dir)[0]
    if resume and saved.is_file():
        try:
            stage = (yaml.safe_load(saved.read_text()) or {}).get("stage")
        except yaml.YAMLError:
            return
        if stage in (1, 2) and stage != cfg.stage:
            raise InputError(f"{run_dir} is a stage-{stage} run and this is stage {cfg.stage}: "
                             + ("to start stage 2 from it, give --init " + str(run_dir) + " and a new -o"
                                if cfg.stage == 2 else "resume it with --stage 2"))


def _train(cfg: TrainConfig, *, base_path: Path, data_dir: Path, run_dir: Path, init: Path | None, resume: bool,
           identity_path: Path | None, on_step) -> Path:
    import time

    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from mgfr_cli.model.base import load_base

    start_ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and start_ckpt is None:
        raise InputError(f"{run_dir}: --resume given but there is no checkpoint to resume from")
    if not resume and latest_checkpoint(run_dir) is not None:
        raise InputError(f"{run_dir}: holds checkpoints already; use --resume to continue it, or another -o")
    base_mark = check_base(run_dir, base_path, start_ckpt is not None)
    if cfg.stage == 2 and init is None and start_ckpt is None:
        raise InputError("stage 2 starts from a stage-1 checkpoint: give --init RUN_DIR_OF_STAGE_1")
    if cfg.stage == 2 and cfg.use_identity and (identity_path is None or not Path(identity_path).is_file()):
        raise WeightsError(f"stage 2 trains identity tokens: missing {identity_path} (mgfr weights fetch arcface), "
                           f"or set use_identity: false in the config to train references without identity")

    # Accelerate keeps its settings (mixed precision) in a process-wide singleton: a second train() in one
    # process (a notebook, the tests) with another precision would be refused. Reset it; the distributed
    # state (process group) is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    # cpu=True where there is no GPU: without it Accelerate does not start gloo under torchrun on CPUs.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              log_with="tensorboard",
                              project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")))
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)

    # 1. The frozen base, in half precision on GPU
    base = load_base(base_path).to(device, weight_dtype).freeze()
    noise_schedule = DDPMScheduler.from_config(base.scheduler_config)
    scaling = float(getattr(base.vae.config, "scaling_factor", 0.18215))
    model_cfg = load_model_config(cfg.model)

    # 2. The adapter: stage 1 copies the UNet encoder into LCA; stage 2 starts from stage 1
    adapter = _build_adapter(cfg, base, model_cfg, init, run_dir)
    adapter.to(device, torch.float32)  # trained weights stay fp32 (Accelerate autocasts the forward)
    adapter.requires_grad_(False)
    trainable = adapter.trainable_parameters(cfg.stage)
    if cfg.stage == 2 and not cfg.use_identity:  # an identity projector without input: train none of it
        skip = {id(p) for m in ("id_proj", "id_norm") for p in getattr(adapter, m).parameters()}
        trainable = [p for p in trainable if id(p) not in skip]
    groups = [{"params": trainable, "lr": cfg.learning_rate}]
    if cfg.stage == 2 and cfg.lca_learning_rate > 0:
        groups.append({"params": adapter.trainable_parameters(1), "lr": cfg.lca_learning_rate})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    # One order for every list of trained weights (EMA, clipping, saving): the module's own.
    trained = [p for p in adapter.parameters() if p.requires_grad]
    if cfg.gradient_checkpointing:
        adapter.enable_gradient_checkpointing()
    if cfg.unet_gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
    ema = EMAModel(trained, decay=cfg.ema_decay)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_steps)
    # The LR scheduler is not prepared: Accelerate would step it once per process.
    adapter, optimizer = accelerator.prepare(adapter, optimizer)

    # 3. Data: positions make every sample reproducible (and a resumed run identical)
    dataset = FaceDataset(data_dir, cfg.stage, model_cfg.resolution, cfg.degradation, cfg.prompts, cfg.seed,
                          hflip=cfg.hflip, max_megapixels=cfg.max_megapixels)
    if cfg.stage == 2 and cfg.use_identity:
        identity_cache(dataset, identity_path, device, run_dir, accelerator)
    cache = (latent_cache(dataset, base, scaling, run_dir, weight_dtype, device, accelerator, accelerator.print,
                          base_mark) if cfg.cache_latents else None)
    step = 0
    if start_ckpt is not None:
        step = resume_latest(run_dir, accelerator.unwrap_model(adapter), optimizer, lr_scheduler, ema, accelerator)
    world, rank = accelerator.num_processes, accelerator.process_index
    sampler = PositionSampler(cfg.batch_size, rank, world, step * cfg.grad_accum, cfg.max_steps * cfg.grad_accum)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.num_workers, persistent_workers=False)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved, note = run_config_path(run_dir)
        if note:
            accelerator.print(f"note: {note}")
        save_config(cfg, saved)
        record_base(run_dir, base_path, base_mark)
        accelerator.init_trackers("mgfr", config={k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))})
        for line in dataset.label_notes() + dataset.long_captions(base):
            accelerator.print(f"note: {line}")
        if dataset.skipped_identities:
            accelerator.print(f"skipped {len(dataset.skipped_identities)} identities with a single image: "
                              + ", ".join(dataset.skipped_identities[:10]))

    # 4. The loop
    adapter.train()
    prediction = base.scheduler_config.get("prediction_type", "epsilon")
    tick, seen = time.time(), 0
    start_norm = _norm(trained)
    for batch in loader:
        with accelerator.accumulate(adapter):
            loss = _loss(batch, base, adapter, noise_schedule, scaling, prediction, weight_dtype, device, cfg.seed, cache,
                         ref_drop=cfg.ref_drop if cfg.lca_learning_rate > 0 else 0.0)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(trained, cfg.grad_clip)
            optimizer.step()  # Accelerate skips it on accumulation micro-steps
            if accelerator.sync_gradients:
                lr_scheduler.step()  # once per optimiser step, whatever the number of processes
            optimizer.zero_grad(set_to_none=True)
        seen += batch["hq"].shape[0] * world
        if not accelerator.sync_gradients:
            continue  # an accumulation micro-step: the optimiser has not stepped yet
        ema.step(trained)
        step += 1
        loss_value = accelerator.reduce(loss.detach(), reduction="mean").item()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            accelerator.log({"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0]}, step=step)
        if on_step is not None and accelerator.is_main_process:
            now = time.time()
            on_step(step, loss_value, seen / max(now - tick, 1e-9))
            tick, seen = now, 0
        if cfg.sample_every and step % cfg.sample_every == 0 and accelerator.is_main_process:
            _log_samples(accelerator, base, accelerator.unwrap_model(adapter), ema, batch, cfg, step)
        if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            check_divergence(trained, start_norm, loss_value, step)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            write_checkpoint(accelerator, accelerator.unwrap_model(adapter), optimizer, lr_scheduler, ema, run_dir, step)
            if accelerator.is_main_process:
                prune_checkpoints(run_dir, cfg.keep_checkpoints)

    # 5. The final EMA adapter: what restore loads from the run folder
    final = run_dir / "adapter"
    if accelerator.is_main_process:
        save_ema_adapter(accelerator.unwrap_model(adapter), ema, final)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def _norm(params) -> float:
    return float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in params)))


DIVERGED_NORM = 100.0  # the trained weights' norm this many times its start: the run has blown up
DIVERGED_LOSS = 1e4  # the diffusion MSE of a sane model is about 1


def check_divergence(params, start_norm: float, loss: float, step: int) -> None:
    """Fail a run that exploded before it writes a useless adapter: NaN/inf, a loss or a weights' norm gone wild."""
    import math

    norm = _norm(params)
    if not math.isfinite(loss) or not math.isfinite(norm) or loss > DIVERGED_LOSS \
            or norm > DIVERGED_NORM * max(start_norm, 1.0):
        raise WeightsError(f"training diverged at step {step} (loss {loss:.3g}, weights' norm {norm:.3g}, "
                           f"{start_norm:.3g} at the start); nothing written for it: lower learning_rate or resume "
                           f"from an earlier checkpoint")


def _build_adapter(cfg: TrainConfig, base, model_cfg, init: Path | None, run_dir: Path):
    """Stage 1: LCA copied from the UNet encoder (or from ``init``, e.g. a converted DiffBIR LCA); stage 2:
    the stage-1 adapter. Its config records what restore checks (docs/design.md §7)."""
    from mgfr_cli.model.adapter import MgfrAdapter
    from mgfr_cli.model.loading import load_adapter
    from mgfr_cli.model.profiles import unet_fingerprint

    if cfg.stage == 1:
        torch.manual_seed(cfg.seed)  # the paths stage 1 does not train still get reproducible weights
        adapter = MgfrAdapter.from_unet(base.unet, **model_cfg.adapter)
        if init is not None:  # fine-tune a given LCA instead of the UNet copy
            try:
                adapter.load_lca(load_adapter(init, base.unet, base.scheduler_config))
            except ValueError as exc:
                raise WeightsError(f"--init {init}: {exc}") from None
        stages = [1]
    else:
        adapter = load_adapter(init if init is not None else run_dir, base.unet, base.scheduler_config)
        if not adapter.config.use_reference:
            raise WeightsError(f"--init {init}: this adapter has no reference branch to train (use_reference: false)")
        stages = sorted(set(adapter.config.get("stages_trained") or [1]) | {2})
    adapter.register_to_config(source="mgfr", stages_trained=stages,
                               use_identity=cfg.use_identity if cfg.stage == 2 else None,
                               prediction_type=base.scheduler_config.get("prediction_type", "epsilon"),
                               beta_schedule=base.scheduler_config.get("beta_schedule"),
                               base_fingerprint=unet_fingerprint(base.unet))
    return adapter


def _loss(batch, base, adapter, noise_schedule, scaling, prediction, weight_dtype, device, seed, cache=None,
          ref_drop: float = 0.0):
    """The base model's objective (epsilon or v) as MSE on latents; noise, t and the reference drop drawn
    per sample position. With ``cache``, clean targets and references come from it (flipped ones at
    ``index + N``); only LQ faces and negative-quality targets go through the VAE."""
    n = cache.shape[0] // 2 if cache is not None else 0
    with torch.no_grad():
        if cache is None:
            z0 = encode_latents(base, batch["hq"], scaling, device, weight_dtype)
        else:
            z0 = cache[(batch["index"] + n * batch["flipped"].long()).to(cache.device)].clone()
            bad = ~batch["target_is_hq"]
            if bool(bad.any()):
                z0[bad.to(z0.device)] = encode_latents(base, batch["hq"][bad], scaling, device, weight_dtype)
        z_lq = encode_latents(base, batch["lq"], scaling, device, weight_dtype)
        text = base.encode_text(batch["prompt"], device)
    # Per-sample generators keyed by position: the same sample gets the same noise in any batch,
    # on any number of processes, before or after a resume.
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + int(p)) for p in batch["position"]]
    noise = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in gens]).to(device, z0.dtype)
    t = torch.stack([torch.randint(0, noise_schedule.config.num_train_timesteps, (1,), generator=g) for g in gens])
    t = t.reshape(-1).to(device)
    # A dropped reference (mask 0) gives no reference signal at all: LCA then learns to restore without one.
    keep = torch.tensor([[float(torch.rand(1, generator=g)) >= ref_drop] for g in gens], device=device)
    z_t = noise_schedule.add_noise(z0, noise, t)
    reference = None
    if "ref" in batch:
        with torch.no_grad():
            z_ref = (cache[(batch["ref_index"] + n * batch["ref_flipped"].long()).to(cache.device)] if cache is not None
                     else encode_latents(base, batch["ref"], scaling, device, weight_dtype))
        ids = batch["id_embed"].to(device)[:, None] if bool(batch["has_id"].any()) else None
        reference = _unwrap(adapter).prepare_reference(z_lq.float(), z_ref[:, None].float(), ids, text.float(),
                                                       mask=keep.float())
    res = adapter(z_t.float(), t, text.float(), z_lq.float(), reference)
    pred = base.unet(z_t, t, encoder_hidden_states=text,
                     down_block_additional_residuals=[r.to(weight_dtype) for r in res.down],
                     mid_block_additional_residual=res.mid.to(weight_dtype)).sample
    target = noise if prediction == "epsilon" else noise_schedule.get_velocity(z0, noise, t)
    return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def estimate_loss(cfg: TrainConfig, *, base_path: Path, data_dir: Path, adapter_path: Path,
                  positions: range = range(16), identity_path: Path | None = None, reference: str = "true") -> float:
    """The training loss of an adapter on fixed sample positions (same images, degradations, noise and t
    every call): a deterministic yardstick for comparing checkpoints. ``reference`` (stage 2): "true" (another
    image of the same person), "blank" (a mid-gray image) or "wrong" (the next sample's reference, another
    person where the batch mixes identities): what a reference branch has learned shows as true < the others."""
    from diffusers import DDPMScheduler

    from mgfr_cli.model.base import load_base
    from mgfr_cli.model.loading import load_adapter

    base = load_base(base_path)
    adapter = load_adapter(adapter_path, base.unet).eval()
    dataset = FaceDataset(data_dir, cfg.stage, int(adapter.config.resolution), cfg.degradation, cfg.prompts, cfg.seed,
                          hflip=cfg.hflip, max_megapixels=cfg.max_megapixels)
    if cfg.stage == 2 and cfg.use_identity and identity_path is not None and identity_path.is_file():
        from mgfr_cli.faces.identity import IdentityEncoder

        dataset.prepare_identity(IdentityEncoder(identity_path))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=list(positions))
    schedule = DDPMScheduler.from_config(base.scheduler_config)
    scaling = float(getattr(base.vae.config, "scaling_factor", 0.18215))
    prediction = base.scheduler_config.get("prediction_type", "epsilon")
    def swap(batch):
        if "ref" in batch and reference == "blank":
            batch = {**batch, "ref": torch.zeros_like(batch["ref"])}
        elif "ref" in batch and reference == "wrong":
            batch = {**batch, "ref": batch["ref"].roll(1, 0), "id_embed": batch["id_embed"].roll(1, 0)}
        return batch

    losses = [float(_loss(swap(b), base, adapter, schedule, scaling, prediction, torch.float32, torch.device("cpu"),
                          cfg.seed)) for b in loader]
    return float(sum(losses) / len(losses))


def _unwrap(model):
    return getattr(model, "module", model)


@torch.no_grad()
def _log_samples(accelerator, base, adapter, ema, batch, cfg: TrainConfig, step: int) -> None:
    """A grid of LQ / restored (EMA weights) / HQ / reference for the first faces of the batch."""
    import numpy as np

    from mgfr_cli.faces.conditions import FaceConditions
    from mgfr_cli.faces.helper import AlignedFace
    from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings

    n = min(4, batch["hq"].shape[0])
    to_u8 = lambda x: ((x.float().clamp(-1, 1) + 1) * 127.5).byte().permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    lq = list(to_u8(batch["lq"][:n]))
    refs = list(to_u8(batch["ref"][:n])) if "ref" in batch else [None] * n
    conds = [FaceConditions(references=(AlignedFace(r, np.zeros((5, 2)), np.eye(2, 3), 0),) if r is not None else ())
             for r in refs]
    params = [p for p in adapter.parameters() if p.requires_grad]
    ema.store(params)
    ema.copy_to(params)
    try:
        pipe = MgfrPipeline(base, adapter, device=accelerator.device, dtype=base.unet.dtype, cast=False)
        with accelerator.autocast():
            restored = pipe.restore(lq, conds, RestoreSettings(steps=cfg.sample_steps, seed=cfg.seed)).images
    finally:
        ema.restore(params)
        adapter.train()
    rows = [np.concatenate([r for r in row if r is not None], axis=1)
            for row in zip(lq, restored, to_u8(batch["hq"][:n]), refs)]
    grid = np.concatenate(rows, axis=0)
    tracker = accelerator.get_tracker("tensorboard", unwrap=True)
    tracker.add_image("samples/lq_restored_hq_ref", grid, step, dataformats="HWC")
