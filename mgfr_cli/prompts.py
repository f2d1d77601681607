"""Prompt text shared by training and restoration (DESIGN.md §4, §5), so both speak the same language."""

from __future__ import annotations

TEMPLATE = "a high-quality photo of a {subject} who has {attributes}"
PLAIN = "a high-quality photo of a {subject}"
# The negative-quality prompt: the caption of the deliberately bad training targets (after SUPIR).
NEGATIVE_QUALITY = "a low-quality photo of a face, blurry, oversmoothed, noisy, jpeg artifacts, deformed"


def positive_prompt(attributes: str | None, subject: str = "person") -> str:
    """The positive prompt: the template filled with the attribute text, or the plain one without."""
    attributes = (attributes or "").strip().strip(",").strip()
    if not attributes:
        return PLAIN.format(subject=subject)
    return TEMPLATE.format(subject=subject, attributes=attributes)


def attribute_text(names) -> str:
    """CelebA-style names (``Big_Nose``, ``Wearing_Lipstick``) as prompt words: ``big nose, wearing lipstick``."""
    return ", ".join(n.replace("_", " ").strip().lower() for n in names if n and n.strip())
