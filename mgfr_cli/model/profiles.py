"""What an adapter was trained for, and so how it must be sampled (docs/design.md §7).

An adapter's ``config.json`` says where its weights came from (``source``), which training stages they
went through (``stages_trained``), whether RCA saw identity tokens (``use_identity``) and which base they
expect (``prediction_type``, ``beta_schedule``, ``base_fingerprint``). Restore uses exactly that: a
converted DiffBIR LCA is prompted the way DiffBIR was trained and guided with DiffBIR's negative prompt; a
reference branch that never trained is skipped and the unused input reported; a base of another kind is
refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import mgfr_cli.model.prompts as prompts
from mgfr_cli.errors import WeightsError

# DiffBIR v2's published face recipe (its README's "v2 (paper version)" command, not inference.py's
# defaults, which are v2.1's): the face SwinIR cleaner, empty positive prompt, this negative prompt, the
# ``spaced`` sampler (ancestral DDPM) with 50 steps, CFG scale s = 4 in the eps_neg + s (eps_c - eps_neg)
# form, i.e. our w = s - 1, wavelet colour fix toward the unclamped cleaned face, one clamp at the end and
# truncation to uint8.
DIFFBIR_NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"


@dataclass(frozen=True)
class Profile:
    source: str
    uses_reference: bool  # RCA trained (stage 2): references change the result
    uses_identity: bool  # RCA trained with ArcFace tokens: the identity model is required
    plain_prompts: bool  # prompt text as given (DiffBIR), not MGFR's training template
    negative_quality: str
    default_guidance: float  # our w_nq
    default_steps: int
    default_cleaner: str  # a cleaners.CLEANERS name, or "none"
    default_scheduler: str = "dpmpp"
    diffbir_output: bool = False  # DiffBIR's post-processing: nothing clamped until uint8, truncated, not rounded

    @property
    def default_identity_guidance(self) -> float:
        """References steer by identity guidance where no trained reference branch reads them."""
        from mgfr_cli.model.identity_guidance import DEFAULT_STRENGTH

        return 0.0 if self.uses_reference else DEFAULT_STRENGTH

    def positive(self, attributes: str | None, subject: str | None = None) -> str:
        if self.plain_prompts:
            return (attributes or "").strip()
        return prompts.positive_prompt(attributes, subject)


def profile_of(config) -> Profile:
    source = str(config.get("source", "mgfr") or "mgfr")
    stages = config.get("stages_trained")
    if source.startswith("diffbir"):
        return Profile(source, False, False, True, DIFFBIR_NEGATIVE, 3.0, 50, "swinir-face", "ddpm", True)
    # ``stages_trained`` None: an adapter that does not record it (built directly, or by an older trainer):
    # trusted as configured.
    ref = bool(config.get("use_reference", True)) and (stages is None or 2 in stages)
    ident = ref and config.get("use_identity") is not False
    return Profile(source, ref, ident, False, prompts.NEGATIVE_QUALITY, 4.0, 30, "none")


def unet_fingerprint(unet) -> str:
    """A short hash of a few UNet tensors: tells SD 2.1 base from SD 2.1 768 (identical shapes)."""
    import hashlib

    import torch

    state = unet.state_dict()
    h = hashlib.sha256()
    for key in ("conv_in.weight", "time_embedding.linear_1.weight", "conv_out.weight"):
        if key in state:
            h.update(state[key].detach().to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def check_base(config, scheduler_config: dict, where: str, unet=None) -> list[str]:
    """Refuse a base whose objective differs from the one the adapter was trained with; return notes (a UNet
    whose weights differ from the training base's: a fine-tuned base may be intended, so it is said, not refused)."""
    notes = []
    want = config.get("base_fingerprint")
    if want and unet is not None and unet_fingerprint(unet) != want:
        notes.append(f"{where}: the base's UNet is not the one this adapter was trained on (fingerprint "
                     f"{unet_fingerprint(unet)}, trained on {want}); results may differ")
    want = config.get("prediction_type")
    have = scheduler_config.get("prediction_type", "epsilon")
    if want and want != have:
        raise WeightsError(f"{where}: the adapter was trained for a {want}-prediction base, this base predicts "
                           f"{have} (its scheduler_config.json); use the base it was trained on")
    want = config.get("beta_schedule")
    have = scheduler_config.get("beta_schedule")
    if want and have and want != have:
        raise WeightsError(f"{where}: the adapter was trained with the {want} beta schedule, this base uses {have}")
    return notes
