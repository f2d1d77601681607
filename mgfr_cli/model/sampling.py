"""Guidance and the denoising loop (DESIGN.md §5): two small pure pieces the pipeline composes."""

from __future__ import annotations

from typing import Callable

import torch

SCHEDULERS = ("dpmpp", "ddim")


def combine_guidance(eps_c: torch.Tensor, eps_nq: torch.Tensor, eps_na: torch.Tensor | None,
                     w_nq: float | torch.Tensor, w_na: float | torch.Tensor) -> torch.Tensor:
    """``eps = eps(c) + w_nq (eps(c) - eps(c_nq)) + w_na (eps(c) - eps(c_na))``; the last term only with ``eps_na``.

    Weights may be tensors broadcastable to ``(B, 1, 1, 1)`` (a face without a negative-attribute
    prompt gets ``w_na = 0``).
    """
    out = eps_c + w_nq * (eps_c - eps_nq)
    if eps_na is not None:
        out = out + w_na * (eps_c - eps_na)
    return out


def make_scheduler(name: str, config: dict):
    """A diffusers scheduler for sampling, on the base model's training noise schedule.

    Both use "trailing" timestep spacing: the first step is t = T-1 whatever the step count (SD 2.1's
    scheduler config says "leading", which starts 30 DDIM steps at t = 958, from pure noise that belongs
    to t = 999: a mismatch that costs detail; Lin et al. 2024, "Common diffusion noise schedules ... are flawed").
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       timestep_spacing="trailing")
    if name == "ddim":
        return DDIMScheduler.from_config(config, timestep_spacing="trailing")
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def denoise(step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor, scheduler, *,
            generator: torch.Generator | None = None,
            callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run ``scheduler.timesteps`` (set by the caller): ``step_fn(latents, t)`` returns the guided model output."""
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        output = step_fn(model_input, t)
        latents = scheduler.step(output, t, latents, generator=generator).prev_sample
        if callback is not None:
            callback(i, t, latents)
    return latents
