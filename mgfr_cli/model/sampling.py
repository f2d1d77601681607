"""Guidance and the denoising loop (docs/design.md §5): two small pure pieces the pipeline composes."""

from __future__ import annotations

from typing import Callable

import torch

SCHEDULERS = ("ddpm", "dpmpp", "ddim")


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


def spaced_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    """DiffBIR's respacing (guided-diffusion's ``space_timesteps`` with one section), high to low: ``steps``
    timesteps from 0 to T-1 taken at a float stride that is accumulated and rounded (Python's round, half to
    even) at every step, so for some counts it differs from a plain ``linspace``; 50 -> 999, 979, 958, ..., 0."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be from 1 to {train_steps}, got {steps}")
    if steps == 1:  # DiffBIR's rule takes t = 0 alone, which would return the start noise: start from the top
        return [train_steps - 1]
    stride = (train_steps - 1) / (steps - 1)
    taken, position = set(), 0.0
    for _ in range(steps):
        taken.add(round(position))
        position += stride
    return sorted(taken, reverse=True)


def make_scheduler(name: str, config: dict):
    """A diffusers scheduler for sampling, on the base model's training noise schedule.

    ``ddpm``: DiffBIR's ``spaced`` sampler, the one its published results use: ancestral DDPM with the
    posterior ("fixed small") variance and fresh noise at every step, no clipping of the predicted x0, on
    :func:`spaced_timesteps` (set by :func:`set_steps`). ``dpmpp`` and ``ddim`` are deterministic ODE solvers
    with "trailing" spacing: the first step is t = T-1 whatever the step count (SD 2.1's scheduler config
    says "leading", which starts 30 DDIM steps at t = 958, from pure noise that belongs to t = 999: a
    mismatch that costs detail; Lin et al. 2024, "Common diffusion noise schedules ... are flawed").
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "ddpm":
        return DDPMScheduler.from_config(config, variance_type="fixed_small", clip_sample=False,
                                         thresholding=False)
    if name == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       timestep_spacing="trailing")
    if name == "ddim":
        return DDIMScheduler.from_config(config, timestep_spacing="trailing")
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def set_steps(scheduler, name: str, steps: int, device) -> None:
    """The scheduler's timesteps for ``steps`` steps: DiffBIR's respacing for ``ddpm``, trailing otherwise."""
    if name == "ddpm":
        scheduler.set_timesteps(timesteps=spaced_timesteps(steps, scheduler.config.num_train_timesteps), device=device)
    else:
        scheduler.set_timesteps(steps, device=device)


def denoise(step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor, scheduler, *,
            generator: torch.Generator | list[torch.Generator] | None = None,
            callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run ``scheduler.timesteps`` (set by the caller): ``step_fn(latents, t)`` returns the guided model output.
    ``generator``: where an ancestral sampler draws each step's noise (a list: one generator per sample)."""
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        output = step_fn(model_input, t)
        latents = scheduler.step(output, t, latents, generator=generator).prev_sample
        if callback is not None:
            callback(i, t, latents)
    return latents
