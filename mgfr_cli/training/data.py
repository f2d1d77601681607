"""Training data: HQ faces with attribute labels (stage 1) and identity groups (stage 2).

Every random choice of a sample (the image, its degradation, prompt dropout, negative-quality swap,
the reference) is drawn from a generator seeded by the sample's *position* in the run, so a run that
is stopped and resumed sees exactly the samples an uninterrupted run would (docs/design.md §4).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

import mgfr_cli.model.prompts as prompts
from mgfr_cli.training.degrade import DegradeConfig, degrade, negative_target
from mgfr_cli.errors import ConfigError, InputError, OutputError
from mgfr_cli.faces.io import read_image
from mgfr_cli.faces.inputs import photos_below
from mgfr_cli.files import resolved


Chance = Annotated[float, Field(ge=0, le=1)]


@dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid"))
class PromptConfig:
    attribute_drop: Chance = 0.3  # each attribute dropped with this chance
    # every attribute dropped with this chance: the plain "a high-quality photo of a {subject}", which is
    # what restore says without --prompt (the empty prompt is never sampled, so it is not trained either)
    prompt_drop: Chance = 0.1
    negative_fraction: Chance = 0.1  # targets swapped for a bad version captioned with the negative-quality prompt
    subject_drop: Chance = 0.2  # "person" instead of man/woman, as restore says when the prompt names no subject


def is_mgfr_folder(folder: Path) -> bool:
    """A folder mgfr made (a training run, the aligned copy ``--align`` caches): never data."""
    folder = Path(folder)
    return (any((folder / n).is_file() for n in ("config.yaml", "config-mgfr.yaml"))
            and ((folder / "checkpoints").is_dir() or (folder / "adapter").is_dir())) \
        or any((folder / n).is_file() for n in (".mgfr-aligned.json", ".mgfr-aligning")) \
        or (folder / ".mgfr-train.lock").is_file()


def list_images(folder: Path, outputs: bool = False) -> list[Path]:
    """Image files below ``folder``, sorted, but mgfr's own: run folders and aligned copies, and what ``mgfr restore``
    wrote there unless ``outputs`` (a restore's predictions, for ``eval``): see
    :func:`~mgfr_cli.faces.inputs.photos_below`."""
    return photos_below(folder, outputs, skip=is_mgfr_folder)


def read_attributes(data_dir: Path) -> dict[str, list[str]]:
    """Per-image attribute names from ``attributes.csv`` (CelebA style: name + 1/-1 columns, or
    ``file,attributes`` with ``;``-separated names) or ``attributes.json`` (``{file: [names]}``); keys
    are file names relative to ``data_dir``. A ``.txt`` caption beside an image is read per sample."""
    out: dict[str, list[str]] = {}
    js, cs = data_dir / "attributes.json", data_dir / "attributes.csv"

    def once(pairs):  # a file named twice: which labels it has would be the last's, the first dropped unsaid
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ConfigError(f"{js}: {k!r} is given twice: keep one")
            seen[k] = v
        return seen

    if js.is_file():
        try:
            raw = json.loads(js.read_text(), object_pairs_hook=once)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{js}: malformed JSON ({exc})") from None
        out = {str(k): [str(a) for a in v] for k, v in raw.items()}
    elif cs.is_file():
        with open(cs, newline="") as fh:
            rows = list(csv.reader(fh))
        if rows:
            head, line = rows[0], {}
            for n, row in enumerate(rows[1:], start=2):
                if not row:
                    continue
                if row[0] in line:
                    raise ConfigError(f"{cs}: line {n} names {row[0]!r} again (line {line[row[0]]}): keep one")
                line[row[0]] = n
                if len(head) == 2 and head[1].lower() in ("attributes", "attrs"):
                    out[row[0]] = [a for a in row[1].split(";") if a.strip()]
                else:
                    out[row[0]] = [name for name, v in zip(head[1:], row[1:]) if v.strip() in ("1", "true", "True")]
    return out


def unreadable(paths: list[Path], max_megapixels: float = 100.0) -> list[str]:
    """``"path: reason"`` for every file that does not decode as an image: each is decoded in full, as training
    will (a truncated JPEG or broken zlib data passes a header check), on a few threads."""
    from concurrent.futures import ThreadPoolExecutor

    from mgfr_cli.errors import MgfrError

    def check(p: Path) -> str | None:
        try:
            read_image(p, max_megapixels)
        except MgfrError as exc:
            return str(exc) if str(p) in str(exc) else f"{p}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a decoder's own error types
            return f"{p}: {type(exc).__name__}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return [r for r in pool.map(check, paths) if r is not None]


def to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """``(3, size, size)`` in [-1, 1] from a uint8 RGB image."""
    import cv2

    if image.shape[0] != size or image.shape[1] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


class FaceDataset(torch.utils.data.Dataset):
    """Item ``p`` (a position in the run, any non-negative integer) -> one training sample.

    Stage 1: ``data_dir`` holds aligned HQ faces. Stage 2: one sub-folder per identity (the Reface-HQ
    layout); the reference is another image of the same identity.
    """

    def __init__(self, data_dir: Path, stage: int, resolution: int, degradation: DegradeConfig,
                 prompt_cfg: PromptConfig, seed: int = 0, hflip: float = 0.0, max_megapixels: float = 100.0):
        self.data_dir = Path(data_dir)
        self.hflip = hflip  # chance of a horizontal flip (target and LQ together; the reference on its own)
        if not self.data_dir.is_dir():
            raise InputError(f"{data_dir}: training data folder not found")
        self.stage, self.resolution, self.degradation, self.prompt_cfg, self.seed = stage, resolution, degradation, prompt_cfg, seed
        self.attributes = read_attributes(self.data_dir)
        self.attributes_by_stem = {Path(k).stem: v for k, v in self.attributes.items()}  # after `--align`: .png names
        self.gender_labelled = any("male" in (n.lower() for n in v) for v in self.attributes.values())
        self.skipped_identities: list[str] = []
        if stage == 1:
            self.images = list_images(self.data_dir)
            self.identity_of = [0] * len(self.images)
            self.groups = [list(range(len(self.images)))]
        else:
            self.images, self.identity_of, self.groups = [], [], []
            data = set(list_images(self.data_dir))  # (what restore wrote anywhere in it is not: its _report/ either)
            for folder in sorted(p for p in self.data_dir.iterdir()
                                 if p.is_dir() and not p.name.startswith(".") and not is_mgfr_folder(p)):
                members = [p for p in list_images(folder) if p in data]
                if not members:
                    continue  # not an identity: no image in it
                if len(members) < 2:
                    self.skipped_identities.append(folder.name)  # no other image to be its reference
                    continue
                self.groups.append(list(range(len(self.images), len(self.images) + len(members))))
                self.identity_of += [len(self.groups) - 1] * len(members)
                self.images += members
        if not self.images:
            made = len(list_images(self.data_dir, outputs=True)) - len(list_images(self.data_dir))
            raise InputError(f"{data_dir}: no usable training images" + (
                " (stage 2 needs one folder per identity with at least two images each)" if stage == 2 else "") + (
                f": its {made} image(s) are `mgfr restore` outputs (its mgfr-summary.json lists them), never "
                f"training data (restored faces are the model's own inventions); give the clean photos" if made else ""))
        self.max_megapixels = max_megapixels
        bad = unreadable(self.images, max_megapixels)
        if bad:  # up front, all of them: not one worker traceback per bad file hours into a run
            raise InputError(f"{data_dir}: {len(bad)} unreadable image(s): " + "; ".join(bad[:5])
                             + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "") + " (fix or remove them)")
        self.id_embeddings: dict[int, np.ndarray] | None = None  # filled by prepare_identity

    def label_notes(self) -> list[str]:
        """What of the label files this run does not use, said before the first step (a label file whose names
        match no image trains every face without its attributes)."""
        lines = []
        if (self.data_dir / "attributes.json").is_file() and (self.data_dir / "attributes.csv").is_file():
            lines.append(f"{self.data_dir / 'attributes.csv'}: not read (attributes.json beside it is)")
        # an image takes a label by its path, its name or its stem (as _prompt looks them up)
        keys = [(str(p.relative_to(self.data_dir)), p.name, p.stem) for p in self.images]
        paths, stems = {k for rel, name, _ in keys for k in (rel, name)}, {stem for *_, stem in keys}
        labelled = sum(1 for rel, name, stem in keys
                       if rel in self.attributes or name in self.attributes or stem in self.attributes_by_stem)
        if unused := sorted(k for k in self.attributes if k not in paths and Path(k).stem not in stems):
            lines.append(f"{len(unused)} of {len(self.attributes)} labelled file name(s) match no image of the data "
                         f"(e.g. {', '.join(unused[:3])}): {labelled} of {len(self.images)} image(s) have labels")
        return lines

    def __len__(self) -> int:  # one pass over the images; positions beyond wrap around
        return len(self.images)

    def _load(self, index: int, flip: bool = False) -> np.ndarray:
        import cv2

        rgb = read_image(self.images[index], self.max_megapixels).rgb8()
        if rgb.shape[:2] != (512, 512):
            rgb = cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(rgb[:, ::-1]) if flip else rgb

    def _labels(self, index: int) -> tuple[list[str], str | None]:
        """An image's label names (its ``.txt`` caption, else its row of the label file), Male left out, and the
        subject they give."""
        path = self.images[index]
        caption = path.with_suffix(".txt")
        if caption.is_file():
            names = [a.strip() for a in caption.read_text().split(",") if a.strip()]
        else:
            names = (self.attributes.get(str(path.relative_to(self.data_dir))) or self.attributes.get(path.name)
                     or self.attributes_by_stem.get(path.stem, []))
        male = any(n.lower() == "male" for n in names)
        # CelebA labels have a Male column, so an unlabelled-male face there is a woman; a caption may name
        # its subject itself ("woman, red lips"), as a user's --prompt may.
        subject = "man" if male else ("woman" if self.gender_labelled and not caption.is_file() else None)
        return [n for n in names if n.lower() != "male"], subject

    def _prompt(self, index: int, rng: np.random.Generator) -> str:
        names, subject = self._labels(index)
        if rng.random() < self.prompt_cfg.subject_drop:
            subject = "person"
        kept = [n for n in names if rng.random() >= self.prompt_cfg.attribute_drop]
        return prompts.positive_prompt(", ".join(kept), subject)

    def long_captions(self, base) -> list[str]:
        """Said before training: the images whose caption with every label is longer than the text encoder reads
        (``base``: the :class:`~mgfr_cli.model.base.BaseModel`); training cuts it, so their last labels are never
        learnt."""
        cut: dict[str, str] = {}  # caption -> its words past the encoder's length (most captions repeat)
        long = []
        for index in range(len(self.images)):
            names, subject = self._labels(index)
            text = prompts.positive_prompt(", ".join(names), subject)
            if text not in cut:
                cut[text] = base.cut_words(text)
            if cut[text]:
                long.append((self.images[index], cut[text]))
        if not long:
            return []
        path, words = long[0]
        return [f"{len(long)} of {len(self.images)} image(s) have a caption longer than the text encoder reads "
                f"({base.text_length()} tokens): their last labels are cut and never learnt (e.g. "
                f"{path.relative_to(self.data_dir)}: '{words}'); give fewer labels per image"]

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.images))

    def __getitem__(self, position: int) -> dict:
        rng = np.random.default_rng([self.seed, int(position)])
        epoch, offset = divmod(int(position), len(self.images))
        index = int(self.order(epoch)[offset])
        flipped = bool(rng.random() < self.hflip)
        hq = self._load(index, flipped)
        lq, _ = degrade(hq, self.degradation, rng)
        text = self._prompt(index, rng)
        target = hq
        if rng.random() < self.prompt_cfg.negative_fraction:
            target, text = negative_target(hq, rng), prompts.NEGATIVE_QUALITY
        elif rng.random() < self.prompt_cfg.prompt_drop:
            text = prompts.positive_prompt(None, "person")
        sample = {"hq": to_tensor(target, self.resolution), "lq": to_tensor(lq, self.resolution), "prompt": text,
                  "position": int(position), "index": index, "target_is_hq": target is hq, "flipped": flipped,
                  "identity": self.identity_of[index]}
        if self.stage == 2:
            group = self.groups[self.identity_of[index]]
            others = [i for i in group if i != index]
            ref = int(others[rng.integers(len(others))])
            ref_flipped = bool(rng.random() < self.hflip)
            sample["ref"] = to_tensor(self._load(ref, ref_flipped), self.resolution)
            sample["ref_index"], sample["ref_flipped"] = ref, ref_flipped
            sample["ref_identity"] = self.identity_of[ref]
            emb = self.id_embeddings.get(ref) if self.id_embeddings is not None else None
            sample["id_embed"] = torch.from_numpy(emb) if emb is not None else torch.zeros(512)
            sample["has_id"] = emb is not None
        return sample

    def clean_tensor(self, index: int, flip: bool = False) -> torch.Tensor:
        """``(3, R, R)``: image ``index`` as a clean target or reference (what the latent cache encodes)."""
        return to_tensor(self._load(index, flip), self.resolution)

    def prepare_identity(self, encoder) -> None:
        """Pre-compute the ArcFace embedding of every image once (they are references in stage 2)."""
        self.id_embeddings = {}
        for start in range(0, len(self.images), 32):
            idx = list(range(start, min(start + 32, len(self.images))))
            embs = encoder.embed([self._load(i) for i in idx])
            self.id_embeddings.update(zip(idx, embs))


def align_dataset(helper, src: Path, dst: Path) -> tuple[Path, list[Path]]:
    """Align every image of ``src`` (its largest face) into ``dst`` once, keeping the folder layout (identity
    folders), captions and label files. A finished ``dst`` is reused. Returns ``dst`` and the images skipped."""
    import shutil

    from mgfr_cli.faces.helper import FaceSelection
    from mgfr_cli.faces.io import write_image

    marker, started = dst / ".mgfr-aligned.json", dst / ".mgfr-aligning"
    images = list_images(src)
    made_from = {"source": str(resolved(src)), "images": _listing(src, images)}  # what the copy is of
    if marker.is_file():
        made = json.loads(marker.read_text())
        if made.get("images", made_from["images"]) != made_from["images"]:  # (a copy made before this record: taken)
            raise ConfigError(f"--align: {dst} holds the faces of {made['source']} as its images were then, and "
                              f"--data {src} is other images: give the data it was made from, or delete {dst} "
                              f"(mgfr's aligned copy) to align these")
        return dst, [Path(p) for p in made["skipped"]]
    if dst.is_dir() and any(dst.iterdir()) and not started.is_file():  # a folder of the user's at that name
        raise OutputError(f"{dst}: holds files mgfr did not write (it is where --align keeps its aligned copy); "
                          f"nothing was changed: move them, or give another -o")
    dst.mkdir(parents=True, exist_ok=True)
    started.touch()  # an alignment stopped half-way is mgfr's own, continued by the next run
    skipped = []
    for p in images:
        try:
            rgb = read_image(p).rgb8()
        except InputError:
            skipped.append(p)
            continue
        faces = helper.detect(rgb, FaceSelection(largest_face=True))
        if not faces:
            skipped.append(p)
            continue
        target = (dst / p.relative_to(src)).with_suffix(".png")
        write_image(target, helper.align(rgb, faces[0], 0).crop)
        if p.with_suffix(".txt").is_file():
            shutil.copy(p.with_suffix(".txt"), target.with_suffix(".txt"))
    for name in ("attributes.csv", "attributes.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    dst.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"skipped": [str(p) for p in skipped], **made_from}))
    return dst, skipped


def _listing(src: Path, images: list[Path]) -> str:
    """The images of ``src`` by name and size (not time: a copied folder is the same data)."""
    import hashlib

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:  # a broken link: listed as such (it is skipped as unreadable)
            return -1

    h = hashlib.sha1()
    for p in images:
        h.update(f"{p.relative_to(src)}\0{size(p)}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


class PositionSampler(torch.utils.data.Sampler):
    """Positions for one process: micro-step ``m``, process ``r``, slot ``j`` -> ``(m * world + r) * batch + j``.

    Starting at ``first_micro_step`` makes a resumed run continue the same sequence; two processes
    with batch B together see exactly what one process with batch 2B sees.
    """

    def __init__(self, batch_size: int, rank: int, world: int, first_micro_step: int, total_micro_steps: int):
        self.b, self.r, self.w, self.m0, self.m1 = batch_size, rank, world, first_micro_step, total_micro_steps

    def __iter__(self):
        for m in range(self.m0, self.m1):
            base = (m * self.w + self.r) * self.b
            yield from range(base, base + self.b)

    def __len__(self) -> int:
        return max(0, self.m1 - self.m0) * self.b
