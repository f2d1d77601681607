"""Where the time goes: one face stage by stage, the GPU kernels of one step, and the memory layout.
Sections of benchmarks/gpu_check.py; not a test."""

from __future__ import annotations

import torch

from bench_common import Run, conditions, face_crop, steps_table
from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings


@torch.no_grad()
def stage_profile(run: Run, pipe: MgfrPipeline) -> None:
    """Where one face's time goes, stage by stage (each synchronised), and the GPU kernels of one step."""
    from mgfr_cli.model.colorfix import color_fix
    from mgfr_cli.model.sampling import denoise, make_scheduler

    s = RestoreSettings(steps=run.args.steps)
    crop, cond = [face_crop(0)], conditions(1)
    pipe.restore(crop, cond, s)
    prof = pipe.profile
    t = {}

    def stage(name, fn):
        sec, out = run.timed(fn)
        t[name] = sec
        return out

    texts = stage("prompts (cached)", lambda: [pipe.encode_prompts([prof.positive("brown eyes")]),
                                               pipe.encode_prompts([prof.negative_quality])])
    lq = stage("to tensor", lambda: pipe.to_tensor(crop))
    z = stage("VAE encode", lambda: pipe.encode_images(lq))
    pipe._ref_cache.clear()
    refs = stage("references (VAE + RLF)", lambda: pipe.prepare_references(z, cond, texts))
    sched = make_scheduler(s.scheduler, pipe.base.scheduler_config)
    sched.set_timesteps(s.steps, device=pipe.device)
    text_all, z_all = torch.cat(texts), z.repeat(2, 1, 1, 1)
    w_na = torch.zeros(1, 1, 1, 1, device=pipe.device, dtype=pipe.dtype)
    step = lambda x, tt: pipe._predict_fn(x, tt, text_all, z_all, refs, s.guidance_quality, w_na)  # noqa: E731
    lat = stage(f"denoise ({s.steps} steps)", lambda: denoise(step, torch.randn_like(z), sched))
    x = stage("VAE decode", lambda: pipe.decode_latents(lat))
    stage("colour fix", lambda: color_fix(x, lq, s.color_fix))
    total = sum(t.values())
    run.say("| stage | ms | share |\n|---|---|---|")
    for k, v in t.items():
        run.say(f"| {k} | {v * 1000:.1f} | {v / total:.0%} |")
    for b in run.args.profile_batches:
        kernels(run, pipe, b)


@torch.no_grad()
def kernels(run: Run, pipe: MgfrPipeline, b: int, label: str = "eager") -> None:
    """The GPU kernels of one eager guided step for ``b`` faces, against its wall time."""
    from torch.profiler import ProfilerActivity, profile

    r, dt, dev = pipe.resolution // 8, pipe.dtype, pipe.device
    z = torch.randn(b, 4, r, r, device=dev, dtype=dt)
    text = torch.randn(2 * b, 77, pipe.base.unet.config.cross_attention_dim, device=dev, dtype=dt)
    refs = pipe.adapter.prepare_reference(z, torch.randn(b, 1, 4, r, r, device=dev, dtype=dt), None, text[:b]).repeat(2)
    w_na = torch.zeros(b, 1, 1, 1, device=dev, dtype=dt)
    tt = torch.tensor(500, device=dev)
    step = lambda: pipe._predict_fn(z, tt, text, z.repeat(2, 1, 1, 1), refs, 4.0, w_na)  # noqa: E731
    step()
    run.sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.cuda else [])) as p:
        for _ in range(3):
            step()
        run.sync()
    ev = p.key_averages()
    if run.cuda:  # kernel rows only: an operator's row repeats the device time of the kernels it launched
        ev = [e for e in ev if "CUDA" in str(e.device_type)] or [e for e in ev if e.self_device_time_total > 0]
    busy = (lambda e: e.self_device_time_total) if run.cuda else (lambda e: e.self_cpu_time_total)
    gpu_ms = sum(busy(e) for e in ev) / 3000
    wall = run.timed(step, repeat=5)[0] * 1000
    if gpu_ms == 0:
        run.say(f"\nOne guided step, {b} face(s): wall {wall:.1f} ms; the profiler recorded no kernel time.")
        return
    run.say(f"\nOne guided step, {b} face(s), {label}: wall {wall:.1f} ms, GPU kernels busy {gpu_ms:.1f} ms "
            f"({gpu_ms / wall:.0%}). Top kernels:\n")
    run.say("| kernel | GPU ms/step | share | calls/step |\n|---|---|---|---|")
    for e in sorted(ev, key=lambda e: -busy(e))[:12]:
        ms = busy(e) / 3000
        run.say(f"| `{e.key[:70]}` | {ms:.2f} | {ms / gpu_ms:.0%} | {e.count // 3} |")


def layouts(run: Run, pipe: MgfrPipeline) -> None:
    """The eager step with the UNet and adapter in the default (NCHW) layout instead of channels_last."""
    for m in (pipe.base.unet, pipe.adapter):
        m.to(memory_format=torch.contiguous_format)
    try:
        run.say("NCHW (contiguous) weights instead of channels_last:\n")
        steps_table(run, pipe, batches=[1, 16], conds=(2,))
        kernels(run, pipe, 16)
    finally:
        for m in (pipe.base.unet, pipe.adapter):
            m.to(memory_format=torch.channels_last if run.cuda else torch.contiguous_format)
