"""``mgfr eval``: the paper's full-reference metrics on restored faces, from maintained libraries.

PSNR and SSIM come from torchmetrics, LPIPS from the ``lpips`` package (its linear heads ship inside
it; the AlexNet trunk is a manifest entry, loaded from the model root), identity cosine from ArcFace
(insightface, pred vs GT). Files are paired by name (stem); unmatched or unreadable files are reported,
not fatal. Images are compared at the GT's size, in RGB, as [0, 1] floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mgfr_cli.errors import MgfrError
from mgfr_cli.faces.helper import load_torch_weights
from mgfr_cli.faces.io import is_image_file, read_image

LPIPS_TRUNK = "alexnet-owt-7be5be79.pth"
PSNR_CAP = 100.0  # identical images: PSNR is infinite; report this cap instead


@dataclass
class EvalReport:
    rows: list = field(default_factory=list)  # dicts: name + one value per metric
    problems: list = field(default_factory=list)  # (file, reason)
    metrics: list = field(default_factory=list)
    missing_metrics: dict = field(default_factory=dict)  # metric -> why it was not computed

    def mean(self) -> dict:
        return {m: float(np.mean([r[m] for r in self.rows])) for m in self.metrics if self.rows}


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


def pair_files(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[tuple[Path, str]]]:
    """(name, pred, gt) for files whose stems match; the rest as problems."""
    def index(folder: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(folder.rglob("*")) if p.is_file() and is_image_file(p)}

    preds, gts = index(pred_dir), index(gt_dir)
    pairs = [(name, preds[name], gts[name]) for name in sorted(preds.keys() & gts.keys())]
    problems = [(preds[n], "no ground truth with this name") for n in sorted(preds.keys() - gts.keys())]
    problems += [(gts[n], "no prediction with this name") for n in sorted(gts.keys() - preds.keys())]
    return pairs, problems


def evaluate(pred_dir: Path, gt_dir: Path, *, lpips_model: Lpips | None = None, identity=None,
             ref_dir: Path | None = None) -> EvalReport:
    """Per-image metrics; ``ref_identity`` (pred vs the same-named reference) when ``ref_dir`` and ArcFace."""
    import cv2

    report = EvalReport(metrics=["psnr", "ssim"])
    if lpips_model is not None:
        report.metrics.append("lpips")
    if identity is not None:
        report.metrics.append("identity")
    refs = {}
    if identity is not None and ref_dir is not None:
        report.metrics.append("ref_identity")
        refs = {p.stem: p for p in sorted(Path(ref_dir).rglob("*")) if p.is_file() and is_image_file(p)}
    pairs, report.problems = pair_files(Path(pred_dir), Path(gt_dir))
    for name, p, g in pairs:
        try:
            pred, gt = read_image(p).rgb8(), read_image(g).rgb8()
        except MgfrError as exc:
            report.problems.append((p, str(exc)))
            continue
        if min(gt.shape[:2]) < 11:  # SSIM's 11x11 window: listed, not fatal to the whole evaluation
            report.problems.append((g, f"{gt.shape[1]}x{gt.shape[0]} is smaller than SSIM's 11-pixel window"))
            continue
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_AREA)
        row = {"name": name, "psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
        if lpips_model is not None:
            row["lpips"] = lpips_model(pred, gt)
        if identity is not None:
            e = identity.embed([pred, gt])
            row["identity"] = float(e[0] @ e[1])
        if refs:
            if name not in refs:
                report.problems.append((p, "no reference with this name"))
                continue
            ref = read_image(refs[name]).rgb8()
            e = identity.embed([pred, cv2.resize(ref, (pred.shape[1], pred.shape[0]))])
            row["ref_identity"] = float(e[0] @ e[1])
        report.rows.append(row)
    return report


def write_csv(report: EvalReport, path: Path) -> None:
    import csv
    import io

    from mgfr_cli.faces.io import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["name", *report.metrics])
    w.writeheader()
    for r in report.rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()})
    if report.rows:
        w.writerow({"name": "MEAN", **{k: f"{v:.6f}" for k, v in report.mean().items()}})
    atomic_write_bytes(Path(path), buf.getvalue().encode())
