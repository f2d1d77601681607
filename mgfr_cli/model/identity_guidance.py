"""Identity guidance: reference photos steer a prior that never learnt to read them, at sampling time.

On a window of steps, the clean latent the model predicts is decoded by the VAE with gradient, warped into
the recogniser's 112 crop, embedded, and moved along the gradient of ``1 - cos(embedding, mean reference
embedding)``. The gradient is taken with respect to the predicted clean latent only, never through the UNet
(as PGDiff and DiffBIR's guidance hook do), so a guided step costs one VAE decode forward and backward plus
the recogniser, not a second UNet pass.

The step rule, per face: ``x0' = x0 - strength * g / rms(g)`` (``rms`` over the face's latent), i.e. each
guided step moves the predicted clean latent by ``strength`` in latent RMS units toward the references,
whatever the gradient's scale (which varies by orders of magnitude between recognisers and timesteps).
The model output is then re-derived from ``x0'`` (epsilon or v), so every scheduler takes the guided
step as its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_STRENGTH = 0.05
WINDOW = (0.2, 0.8)  # guided while t / T lies in this range: after the layout forms, before the last details
DECODE_CHUNK = 4  # faces per decode with gradient (memory: the VAE decoder's activations are kept for backward)


@dataclass
class IdentityTarget:
    """Per face: the mean reference embedding (unit) and whether the face has references at all."""

    embedding: torch.Tensor  # (B, 512)
    active: torch.Tensor  # (B,) bool


class IdentityGuidance:
    def __init__(self, recogniser, vae, scaling: float, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 strength: float = DEFAULT_STRENGTH, window: tuple[float, float] = WINDOW):
        self.recogniser = recogniser
        self.vae = vae
        self.scaling = scaling
        self.alphas_cumprod = alphas_cumprod.double()
        self.prediction_type = prediction_type
        self.strength = float(strength)
        self.window = window
        self.train_steps = len(alphas_cumprod)
        self.last_cosine: torch.Tensor | None = None  # the recogniser's cosine at the last guided step (diagnostics)
        self.steps_guided = 0  # how many steps fell in the window and were guided

    def target(self, references: list[list], device) -> IdentityTarget | None:
        """The references of each face (lists of uint8 aligned crops) -> their mean unit embedding."""
        if not any(references):
            return None
        embeddings, active = [], []
        for refs in references:
            if refs:
                e = self.recogniser.embed_crops(list(refs)).mean(0)
                embeddings.append(F.normalize(e, dim=-1))
            else:
                embeddings.append(torch.zeros(512, device=device))
            active.append(bool(refs))
        return IdentityTarget(torch.stack(embeddings).to(device).float(), torch.tensor(active, device=device))

    def applies(self, t) -> bool:
        frac = float(t) / (self.train_steps - 1)
        return self.strength > 0 and self.window[0] <= frac <= self.window[1]

    def adjust(self, x: torch.Tensor, t: torch.Tensor, output: torch.Tensor, target: IdentityTarget) -> torch.Tensor:
        """The model output for ``x`` at ``t`` with its clean-latent prediction moved toward the references."""
        if target is None or not self.applies(t):
            return output
        self.steps_guided += 1
        abar = self.alphas_cumprod[int(t)].item()
        a, s = abar**0.5, (1 - abar) ** 0.5
        x32, out32 = x.float(), output.float()
        if self.prediction_type == "v_prediction":
            x0 = a * x32 - s * out32
        else:
            x0 = (x32 - s * out32) / a
        grad = self.gradient(x0, target)
        rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        x0 = x0 - self.strength * grad / rms * target.active.view(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":
            eps = (x32 - a * x0) / s
            new = a * eps - s * x0
        else:
            new = (x32 - a * x0) / s
        return new.to(output.dtype)

    def gradient(self, x0: torch.Tensor, target: IdentityTarget) -> torch.Tensor:
        """d(1 - cos) / d(x0) for every face, decoding ``DECODE_CHUNK`` faces at a time."""
        grads, cosines = [], []
        dtype = next(self.vae.parameters()).dtype
        for z, e in zip(x0.split(DECODE_CHUNK), target.embedding.split(DECODE_CHUNK)):
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                image = self.vae.decode((z / self.scaling).to(dtype)).sample.float().clamp(-1, 1)
                cos = (self.recogniser(image) * e).sum(-1)
                (g,) = torch.autograd.grad((1 - cos).sum(), z)
            grads.append(g)
            cosines.append(cos.detach())
        self.last_cosine = torch.cat(cosines)
        return torch.cat(grads)


def reference_notes(profile, settings, restorer, has_recogniser: bool, has_judge: bool) -> list[str]:
    """What the run says, once, about how references were used (never silently dropped)."""
    lines = []
    if restorer.guided:
        lines.append(f"references: identity guidance (strength {settings.identity_guidance:g}, steps with t/T in "
                     f"{WINDOW[0]:g}..{WINDOW[1]:g}) steered {restorer.guided} face(s) toward them"
                     + ("" if has_judge else "; similarity before/after not measured: the independent judge "
                        "arcface_w600k_r50.onnx is missing (mgfr weights fetch arcface)"))
    if "references" in restorer.ignored:
        why = ("--identity-guidance 0" if settings.identity_guidance == 0 else
               "the recogniser is missing (mgfr weights fetch arcface-irse50)" if not has_recogniser else
               f"no step of {settings.steps} fell in its window t/T {WINDOW[0]:g}..{WINDOW[1]:g}: use more --steps")
        lines.append(f"references given but not used: the adapter ({profile.source}) has no trained reference "
                     f"branch" + (f" and identity guidance is off ({why})" if why else ""))
    return lines
