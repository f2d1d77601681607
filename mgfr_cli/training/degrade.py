"""Synthetic degradations of HQ faces (docs/design.md §4, the GFPGAN/CodeFormer family), seeded.

``degrade`` draws every parameter from the given ``numpy.random.Generator`` and returns it, so a
sample is reproducible from its seed and its parameters can be checked against the configured ranges.
Images are ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

from mgfr_cli.files import resolved


def _ordered(pair):
    if pair[0] > pair[1]:
        raise ValueError(f"a [low, high] range needs low <= high, got {list(pair)}")
    return pair


Chance = Annotated[float, Field(ge=0, le=1)]


def _range(low, high, kind=float):
    """A ``[low, high]`` pair of numbers inside ``[low, high]`` bounds, in order."""
    item = Annotated[kind, Field(ge=low, le=high, allow_inf_nan=False)] if kind is float else Annotated[kind, Field(ge=low, le=high)]
    return Annotated[tuple[item, item], AfterValidator(_ordered)]


def _odd(k: int) -> int:
    if k % 2 == 0:
        raise ValueError(f"must be odd, got {k}")
    return k


@dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid"))
class DegradeConfig:
    """Degradation ranges, validated (strict types, finite numbers, ordered ranges, sane bounds)."""

    blur_prob: Chance = 1.0
    blur_sigma: _range(0.01, 50.0) = (0.1, 10.0)
    blur_kernel: Annotated[int, Field(ge=3, le=101), AfterValidator(_odd)] = 41
    anisotropic_prob: Chance = 0.5
    downsample: _range(1.0, 64.0) = (1.0, 16.0)
    min_size: Annotated[int, Field(ge=8, le=2048)] = 32
    noise: _range(0.0, 255.0) = (0.0, 20.0)
    jpeg: _range(1, 100, int) = (30, 100)
    color_jitter_prob: Chance = 0.0
    color_jitter: Annotated[float, Field(ge=0, le=1)] = 0.1  # brightness/contrast shift, as a fraction
    gray_prob: Chance = 0.0


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """A normalised (possibly rotated, anisotropic) Gaussian kernel of odd ``size``."""
    r = np.arange(size, dtype=np.float64) - size // 2
    xx, yy = np.meshgrid(r, r)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def degrade(image: np.ndarray, cfg: DegradeConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Blur -> downsample -> noise -> JPEG -> resize back (-> colour jitter, grayscale). Returns (LQ, params)."""
    import cv2

    h, w = image.shape[:2]
    x = image.astype(np.float32)
    params: dict = {}
    if rng.random() < cfg.blur_prob:
        sx = float(rng.uniform(*cfg.blur_sigma))
        aniso = rng.random() < cfg.anisotropic_prob
        sy = float(rng.uniform(*cfg.blur_sigma)) if aniso else sx
        theta = float(rng.uniform(0, np.pi)) if aniso else 0.0
        x = cv2.filter2D(x, -1, gaussian_kernel(cfg.blur_kernel, sx, sy, theta), borderType=cv2.BORDER_REFLECT)
        params.update(blur_sigma=(sx, sy), blur_theta=theta)
    factor = float(rng.uniform(*cfg.downsample))
    small = (max(cfg.min_size, round(w / factor)), max(cfg.min_size, round(h / factor)))
    x = cv2.resize(x, small, interpolation=[cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC][rng.integers(3)])
    params["size"] = small
    sigma = float(rng.uniform(*cfg.noise))
    x = x + rng.normal(0, sigma, x.shape).astype(np.float32)
    params["noise"] = sigma
    quality = int(rng.integers(cfg.jpeg[0], cfg.jpeg[1] + 1))
    x = jpeg_roundtrip(np.clip(x, 0, 255).round().astype(np.uint8), quality).astype(np.float32)
    params["jpeg"] = quality
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < cfg.color_jitter_prob:
        b, c = rng.uniform(-cfg.color_jitter, cfg.color_jitter, 2)
        x = (x - x.mean()) * (1 + c) + x.mean() + b * 255
        params["color_jitter"] = (float(b), float(c))
    if rng.random() < cfg.gray_prob:
        x = np.repeat((x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=2)
        params["gray"] = True
    return np.clip(x, 0, 255).round().astype(np.uint8), params


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """An RGB uint8 image through JPEG at ``quality``. OpenCV encodes BGR: flip in and out, or the chroma
    (YCbCr subsampling and quantisation) would be computed with red and blue swapped."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def negative_target(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A deliberately bad version of an HQ face (blurred, over-smoothed or JPEG-broken), after SUPIR."""
    import cv2

    kind = rng.integers(3)
    if kind == 0:
        return cv2.GaussianBlur(image, (0, 0), float(rng.uniform(3, 8)))
    if kind == 1:
        out = image
        for _ in range(3):
            out = cv2.bilateralFilter(out, 9, 75, 75)
        return cv2.medianBlur(out, 7)
    return jpeg_roundtrip(image, int(rng.integers(5, 16)))


def degrade_inputs(inputs, output, cfg: DegradeConfig, seed: int, recursive: bool, on_note=lambda line: None,
                   max_megapixels: float = 100.0) -> list:
    """``mgfr degrade``: a degraded PNG per input (image i seeded by ``[seed, i]``) and ``params.json``.
    Never writes over an input (``-o`` may be the input folder: such a photo fails, the rest go on)."""
    import json
    from contextlib import suppress
    from pathlib import Path

    from mgfr_cli.faces.inputs import FAILED, RESTORED, Outcome, collect_inputs
    from mgfr_cli.errors import STOPPING_WRITE_ERRORS, MgfrError, OutputError, unexpected
    from mgfr_cli.faces.io import read_image, write_image
    from mgfr_cli.files import Journal, atomic_write_bytes, check_output_folder

    from mgfr_cli.ownership import own_or_free

    output = Path(output)
    check_output_folder(output)
    record, note = own_or_free(output / "params.json", _is_params)
    # mgfr's own earlier copies: still listed after this run (a run over other photos into the same folder keeps
    # their parameters, and a later run may write them again); never inputs (``-o`` may be the input folder)
    params = json.loads(record.read_text()) if record.is_file() else {}
    journal = Journal(record)  # the copies of a run stopped before it wrote params.json (Ctrl-C, kill -9): mgfr's
    params.update({r["copy"]: r["params"] for r in journal.rows() if isinstance(r.get("copy"), str)})
    params = {k: v for k, v in params.items() if (output / Path(k).with_suffix(".png")).is_file()}  # still there
    written = set(params)
    items, outcomes = collect_inputs(inputs, recursive, exclude=output,
                                     own={resolved(output / Path(k).with_suffix(".png")) for k in written})
    sources = {resolved(it.path) for it in items}
    for i, item in enumerate(items):
        target = output / item.relative.with_suffix(".png")
        try:
            if resolved(target) in sources:
                raise MgfrError(f"{item.path}: its degraded copy {target} would overwrite an input; choose another -o")
            if target.exists() and str(item.relative) not in written:
                raise MgfrError(f"{item.path}: {target} exists and was not written by mgfr degrade; not replaced")
            lq, p = degrade(read_image(item.path, max_megapixels).rgb8(), cfg, np.random.default_rng([seed, i]))
            write_image(target, lq)
        except MgfrError as exc:
            outcomes.append(Outcome(item.path, FAILED, str(exc)))
            continue
        except OSError as exc:
            if exc.errno not in STOPPING_WRITE_ERRORS:  # this file's (a name the folder refuses): the rest go on
                outcomes.append(Outcome(item.path, FAILED, f"cannot write {target}: {exc.strerror or exc}"))
                continue
            with suppress(OSError):  # a full disk, a read-only folder: the run stops, the copies made are listed
                atomic_write_bytes(record, json.dumps(params, indent=1, default=list).encode())
                journal.clear()
            raise OutputError(f"{output}: cannot write ({exc.strerror or exc}); stopped after "
                              f"{sum(o.status == RESTORED for o in outcomes)} copies, inputs untouched") from None
        except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the rest
            outcomes.append(Outcome(item.path, FAILED, unexpected(item.path, exc)))
            continue
        params[str(item.relative)] = p
        journal.add({"copy": str(item.relative), "params": p})
        outcomes.append(Outcome(item.path, RESTORED, "", target, 0))
    if note:
        on_note(note)
    atomic_write_bytes(record, json.dumps(params, indent=1, default=list).encode())
    journal.clear()
    return outcomes


def _is_params(path) -> bool:
    """``params.json`` as degrade writes it: an object of relative paths -> drawn parameters."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())
