"""Prompt text shared by training and restoration (docs/design.md §4, §5): one function builds both.

Training writes "a high-quality photo of a {subject} who has {attributes}" from a face's labels; restore
writes the same sentence from ``--prompt``, where a subject word the user types ("man, beard") becomes the
subject instead of an attribute ("a ... photo of a man who has beard"). The negative-attribute prompt
(``--negative-prompt``, c_na) is that same sentence filled with the attributes to avoid: the model learns
what each attribute looks like from positive prompts, so eps(c_na) predicts a face *with* them and the
guidance term ``w_na (eps(c) - eps(c_na))`` moves away from it, as a negative prompt does in Stable
Diffusion. No separate "negative attribute" training is needed for that, and none is done.
"""

from __future__ import annotations

TEMPLATE = "a high-quality photo of a {subject} who has {attributes}"
PLAIN = "a high-quality photo of a {subject}"
# The negative-quality prompt: the caption of the deliberately bad training targets (after SUPIR).
NEGATIVE_QUALITY = "a low-quality photo of a face, blurry, oversmoothed, noisy, jpeg artifacts, deformed"

# Words that name the subject rather than an attribute, and the subject they mean.
SUBJECTS = {"man": "man", "male": "man", "men": "man", "boy": "boy", "woman": "woman", "female": "woman",
            "women": "woman", "girl": "girl", "person": "person", "child": "child", "baby": "baby"}

# CelebA labels that must not become positive attribute text: the subject itself (Male), labels that
# contradict the quality direction or are judgements (Blurry, Attractive), and negations that read wrong
# as "who has no beard" are mapped to what they mean.
DROPPED_LABELS = {"male", "blurry", "attractive"}
LABEL_TEXT = {"no_beard": "a clean-shaven face", "young": "a young face", "5_o_clock_shadow": "stubble",
              "mouth_slightly_open": "a slightly open mouth", "smiling": "a smile", "chubby": "a round face",
              "pale_skin": "pale skin", "oval_face": "an oval face"}


def positive_prompt(attributes: str | None, subject: str | None = None) -> str:
    """The sentence for a face: the template filled with ``attributes`` (comma-separated label names or
    words, normalised by :func:`attribute_text`). Without ``subject``, a subject word among the attributes
    ("woman, red lips") sets it; else "person"."""
    parts = [p.strip() for p in (attributes or "").split(",") if p.strip()]
    found = [SUBJECTS[p.lower()] for p in parts if p.lower() in SUBJECTS]
    parts = [p for p in parts if p.lower() not in SUBJECTS]
    if subject is None:
        subject = found[0] if found else "person"
    text = attribute_text(parts)
    if not text:
        return PLAIN.format(subject=subject)
    return TEMPLATE.format(subject=subject, attributes=text)


def attribute_text(names) -> str:
    """CelebA-style names as prompt words: ``Big_Nose, Wearing_Lipstick`` -> ``big nose, wearing lipstick``;
    the subject and contradicting labels dropped, negations mapped (``No_Beard`` -> a clean-shaven face)."""
    out = []
    for n in names:
        key = "_".join((n or "").strip().lower().split())
        if not key or key in DROPPED_LABELS:
            continue
        out.append(LABEL_TEXT.get(key, key.replace("_", " ")))
    return ", ".join(out)


def cut_notes(restorer) -> list[str]:
    """One line per prompt longer than the text encoder reads (``restorer.cut``: which prompt, the words past it),
    naming the words that were not used: a prompt is never shortened without a word."""
    pipeline = restorer.pipeline
    around = "" if pipeline.profile.plain_prompts else ", the sentence mgfr puts around it included"
    return [f"{kind} longer than the text encoder reads ({pipeline.base.text_length()} tokens{around}): not used: "
            f"'{words}' (shorten it)" for kind, words in restorer.cut]
