"""``mgfr eval``: the paper's full-reference metrics on restored faces, from maintained libraries, and a
no-reference one for photos without ground truth.

PSNR and SSIM come from torchmetrics, LPIPS from the ``lpips`` package (its linear heads ship inside
it; the AlexNet trunk is a manifest entry, loaded from the model root), identity cosine from ArcFace
(insightface, pred vs GT), CLIP-IQA from :mod:`training.quality` (on the prediction as it is). Files are paired
by relative path (extension aside: ``id07/a.png`` with ``id07/a.jpg``, never with ``id08/a.png``); unmatched,
ambiguous or unreadable files are reported, not fatal. Images are compared at the GT's size, in RGB, as [0, 1]
floats. Without ground truth, each prediction gets the no-reference metric (and ``ref_identity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mgfr_cli.errors import MgfrError
from mgfr_cli.faces.helper import load_torch_weights
from mgfr_cli.faces.io import read_image
from mgfr_cli.files import resolved

LPIPS_TRUNK = "alexnet-owt-7be5be79.pth"
PSNR_CAP = 100.0  # identical images: PSNR is infinite; report this cap instead
METRICS = ("psnr", "ssim", "lpips", "identity", "ref_identity", "clipiqa")  # the CSV's columns, in this order


@dataclass
class EvalReport:
    rows: list = field(default_factory=list)  # dicts: name + one value per metric
    problems: list = field(default_factory=list)  # (file, reason): files not scored
    notes: list = field(default_factory=list)  # (file, what): scored, with something to know
    metrics: list = field(default_factory=list)
    missing_metrics: dict = field(default_factory=dict)  # metric -> why it was not computed

    def mean(self) -> dict:
        """Each metric's mean over the images that have it (a missing reference leaves only its own metric out)."""
        out = {}
        for m in self.metrics:
            values = [r[m] for r in self.rows if math.isfinite(r.get(m, float("nan")))]
            out[m] = float(np.mean(values)) if values else float("nan")
        return out


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if np.array_equal(pred, gt):
        return PSNR_CAP
    return float(peak_signal_noise_ratio(_to_tensor(pred), _to_tensor(gt), data_range=1.0))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(_to_tensor(pred), _to_tensor(gt), data_range=1.0))


class Lpips:
    """LPIPS (AlexNet) with the trunk's weights from the model root, never downloaded."""

    def __init__(self, trunk: Path, device: str = "cpu"):
        import lpips
        import torchvision

        alex = torchvision.models.alexnet()
        alex.load_state_dict(load_torch_weights(trunk))
        self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        for slice_ in (self.model.net.slice1, self.model.net.slice2, self.model.net.slice3, self.model.net.slice4,
                       self.model.net.slice5):
            for name, module in slice_.named_children():
                module.load_state_dict(alex.features[int(name)].state_dict())
        self.model.eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, pred: np.ndarray, gt: np.ndarray) -> float:
        a, b = (_to_tensor(x).to(self.device) * 2 - 1 for x in (pred, gt))
        return float(self.model(a, b).mean())


def index_images(folder: Path, restored: bool = False) -> tuple[dict[str, Path], list[tuple[Path, str]]]:
    """Images of ``folder`` by relative path without extension (``id07/a``), and the files left out: a second
    image of the same name (``a.png`` beside ``a.jpg``) is ambiguous, and both are listed, not guessed.
    ``restored``: an output ``mgfr restore`` wrote there (its summary lists it) goes by the name of the photo it was
    restored from (``a_r.png`` of ``--suffix _r`` is ``a``), so a restore's outputs pair with their ground truth;
    the photos it restored, when they are there too (``-o`` their folder), are not predictions."""
    from mgfr_cli.ownership import is_restore_folder, restore_rows
    from mgfr_cli.training.data import list_images

    made = (restore_rows(folder, [p.name for p in Path(folder).iterdir()]) or {}) if restored else {}
    read = {resolved(s) for s in made.values()} - set(made)  # its inputs, when -o was their folder
    found: dict[str, list[Path]] = {}
    for p in list_images(folder, outputs=restored):
        rel = p.relative_to(folder)
        if is_restore_folder(rel.parts[0]) or resolved(p) in read:  # what restore keeps beside its outputs, reads
            continue
        source = made.get(resolved(p))
        found.setdefault(str(rel.parent / Path(source).stem if source else rel.with_suffix("")), []).append(p)
    index = {k: v[0] for k, v in found.items() if len(v) == 1}
    problems = [(p, f"ambiguous: {len(v)} images named {k}.* ({', '.join(q.suffix for q in v)}); rename all but one")
                for k, v in found.items() if len(v) > 1 for p in v]
    return index, problems


def pair_files(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[tuple[Path, str]]]:
    """(name, pred, gt) for files at the same relative path (extension aside: a restored ``a.png`` pairs with a
    ground-truth ``a.jpg``); every file left unpaired or ambiguous is listed with the reason."""
    preds, problems = index_images(pred_dir, restored=True)
    gts, more = index_images(gt_dir)
    problems += more
    pairs = [(name, preds[name], gts[name]) for name in sorted(preds.keys() & gts.keys())]
    problems += [(preds[n], f"no ground truth at {n}.* in {gt_dir}") for n in sorted(preds.keys() - gts.keys())]
    problems += [(gts[n], f"no prediction at {n}.* in {pred_dir}") for n in sorted(gts.keys() - preds.keys())]
    return pairs, problems


def evaluate(pred_dir: Path, gt_dir: Path | None = None, *, lpips_model: Lpips | None = None, identity=None,
             ref_dir: Path | None = None, quality=None) -> EvalReport:
    """Per-image metrics; ``ref_identity`` (pred vs the reference at the same relative path) when ``ref_dir``
    and ArcFace; ``clipiqa`` when ``quality`` (a :class:`training.quality.ClipIqa`). A prediction of another
    size than its ground truth is resized to it when the aspect ratio is the same (and said so), refused when it
    is not; a missing reference leaves only ``ref_identity`` empty. ``gt_dir`` None: every prediction, with the
    metrics that need no ground truth."""
    import cv2

    full = {"psnr": True, "ssim": True, "lpips": lpips_model is not None, "identity": identity is not None}
    given = {**{k: v and gt_dir is not None for k, v in full.items()},
             "ref_identity": identity is not None and ref_dir is not None, "clipiqa": quality is not None}
    report = EvalReport(metrics=[m for m in METRICS if given[m]])
    refs = {}
    if given["ref_identity"]:
        refs, bad = index_images(Path(ref_dir))
        report.problems += bad
    if gt_dir is None:
        preds, problems = index_images(Path(pred_dir), restored=True)
        pairs = [(name, preds[name], None) for name in sorted(preds)]
    else:
        pairs, problems = pair_files(Path(pred_dir), Path(gt_dir))
    report.problems += problems
    for name, p, g in pairs:
        try:
            pred = read_image(p).rgb8()
            gt = read_image(g).rgb8() if g is not None else None
        except MgfrError as exc:
            report.problems.append((p, str(exc)))
            continue
        row = {"name": name}
        if quality is not None:  # on the prediction as it is: no resize to a ground truth
            small = min(pred.shape[:2]) < quality.min_size
            row["clipiqa"] = float("nan") if small else quality(pred)
            if small:
                report.notes.append((p, f"{pred.shape[1]}x{pred.shape[0]} is smaller than CLIP-IQA's "
                                        f"{quality.min_size} px: clipiqa left empty"))
        if gt is None:
            if given["ref_identity"]:
                _ref_identity(row, pred, p, name, refs, identity, report)
            report.rows.append(row)
            continue
        if min(gt.shape[:2]) < 11:  # SSIM's 11x11 window: listed, not fatal to the whole evaluation
            report.problems.append((g, f"{gt.shape[1]}x{gt.shape[0]} is smaller than SSIM's 11-pixel window"))
            continue
        if pred.shape != gt.shape:
            (ph, pw), (gh, gw) = pred.shape[:2], gt.shape[:2]
            if abs(pw / ph - gw / gh) > 0.01 * gw / gh:
                report.problems.append((p, f"{pw}x{ph}, its ground truth {g.name} is {gw}x{gh}: another aspect "
                                           f"ratio, not scored"))
                continue
            report.notes.append((p, f"{pw}x{ph} resized to its ground truth's {gw}x{gh} before scoring"))
            pred = cv2.resize(pred, (gw, gh), interpolation=cv2.INTER_AREA if pw > gw else cv2.INTER_CUBIC)
        row.update(psnr=psnr(pred, gt), ssim=ssim(pred, gt))
        if lpips_model is not None:
            row["lpips"] = lpips_model(pred, gt)
        if identity is not None:
            e = identity.embed([pred, gt])
            row["identity"] = float(e[0] @ e[1])
        if given["ref_identity"]:
            _ref_identity(row, pred, p, name, refs, identity, report)
        report.rows.append(row)
    return report


def _ref_identity(row: dict, pred: np.ndarray, path: Path, name: str, refs: dict, identity,
                  report: EvalReport) -> None:
    """``row["ref_identity"]``: ArcFace cosine of the prediction and the reference of the same name (resized to
    it); left empty, and said, where there is none."""
    import cv2

    row["ref_identity"] = float("nan")
    if name not in refs:
        report.notes.append((path, "no reference at this path: ref_identity left empty"))
        return
    ref = read_image(refs[name]).rgb8()
    e = identity.embed([pred, cv2.resize(ref, (pred.shape[1], pred.shape[0]))])
    row["ref_identity"] = float(e[0] @ e[1])


def load_metrics(root: Path, device: str, *, gt: bool, ref: bool) -> tuple[dict, list[str]]:
    """The metric models whose weights are in the model root, as :func:`evaluate`'s keywords, and for each one
    left out the line that says how to get it. ``gt``/``ref``: whether a ground truth and references are given
    (LPIPS needs a ground truth; ArcFace a ground truth or references)."""
    from mgfr_cli.faces.identity import ARCFACE_FILE, IdentityEncoder
    from mgfr_cli.training.quality import CLIP_RN50, ClipIqa

    kwargs, skipped = {}, []
    if gt and (root / LPIPS_TRUNK).is_file():
        kwargs["lpips_model"] = Lpips(root / LPIPS_TRUNK, device)
    elif gt:
        skipped.append("lpips (mgfr weights fetch lpips-alex)")
    if (gt or ref) and (root / ARCFACE_FILE).is_file():
        kwargs["identity"] = IdentityEncoder(root / ARCFACE_FILE, device)
    else:
        if gt:
            skipped.append("identity (mgfr weights fetch arcface)")
        if ref:
            skipped.append("ref_identity (needs ArcFace: mgfr weights fetch arcface)")
    if (root / CLIP_RN50 / "open_clip_model.safetensors").is_file():
        kwargs["quality"] = ClipIqa(root / CLIP_RN50, device)
    else:
        skipped.append(f"clipiqa (mgfr weights fetch {CLIP_RN50})")
    return kwargs, skipped


def is_eval_csv(path: Path) -> bool:
    """A table ``mgfr eval`` wrote (its header: ``name`` and metric names), which a later eval may replace."""
    from mgfr_cli.ownership import csv_header

    header = csv_header(path)
    return header[:1] == ["name"] and len(header) > 1 and set(header[1:]) <= set(METRICS)


def write_csv(report: EvalReport, path: Path) -> str:
    """Write the table to ``path``, or beside it when a file there is not one eval wrote (kept); returns the note
    saying so, else ''."""
    import csv
    import io

    from mgfr_cli.files import atomic_write_bytes
    from mgfr_cli.ownership import own_or_free

    path, note = own_or_free(Path(path), is_eval_csv)

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["name", *report.metrics])
    w.writeheader()
    for r in report.rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) and math.isfinite(v) else ("" if isinstance(v, float) else v))
                    for k, v in r.items()})
    if report.rows:
        w.writerow({"name": "MEAN", **{k: f"{v:.6f}" for k, v in report.mean().items()}})
    atomic_write_bytes(path, buf.getvalue().encode())
    return note


def check_eval_paths(pred: Path, gt: Path, ref: Path | None, report: Path | None) -> None:
    """One line before any metric is computed: the folders exist and hold images, the CSV can be written."""
    import tempfile

    from mgfr_cli.errors import OutputError
    from mgfr_cli.training.data import list_images

    for folder, flag in ((pred, "--pred"), (gt, "--gt"), (ref, "--ref")):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise MgfrError(f"{flag} {folder}: " + ("a file, not a folder" if Path(folder).exists() else "not found"))
        if not list_images(folder, outputs=flag == "--pred"):  # a restore's outputs are predictions
            raise MgfrError(f"{flag} {folder}: no images in it")
    if report is not None:
        if Path(report).is_dir():
            raise MgfrError(f"-o {report}: is a folder; give a CSV file name (e.g. {Path(report) / 'eval.csv'})")
        try:
            Path(report).parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=Path(report).parent):
                pass
        except OSError as exc:
            raise OutputError(f"-o {report}: cannot write there ({exc.strerror or exc})") from None
