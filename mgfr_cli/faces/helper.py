"""Detect, align and paste back faces: the whole face round-trip in one helper (docs/design.md §2).

``FaceHelper`` holds models and settings only; everything about one photo travels in frozen
:class:`DetectedFace` / :class:`AlignedFace` values, so the helper can serve many photos (and threads).
``restore`` and ``align`` share every line of detection and alignment through this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgfr_cli.errors import ConfigError, InputError, WeightsError

# The FFHQ 5-point template at 512x512: left eye, right eye, nose tip, left and right mouth corners.
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=np.float32,
)

DETECTORS = {
    # --detector name -> (facexlib network name, weight file in the model root)
    "retinaface_resnet50": ("resnet50", "detection_Resnet50_Final.pth"),
    "retinaface_mobile0.25": ("mobile0.25", "detection_mobilenet0.25_Final.pth"),
}
PARSENET_FILE = "parsing_parsenet.pth"


@dataclass(frozen=True)
class DetectedFace:
    """One face found in a photo, in the photo's pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth, right mouth

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[0] - self.landmarks[1]))


@dataclass(frozen=True)
class AlignedFace:
    """A face warped onto the FFHQ template, with what is needed to paste it back."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB
    landmarks: np.ndarray  # (5, 2) in the source photo
    affine: np.ndarray  # (2, 3) source photo -> crop
    index: int  # position in the photo's face order (left to right)
    source: Path | None = None
    score: float = 1.0
    box: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))
    original: np.ndarray | None = None  # --has-aligned, square: the input as given (resized in and out in float)

    @property
    def to_restore(self) -> np.ndarray:
        """What the restorer gets: a square aligned input as given (the pipeline resizes it to its resolution and
        the result back, in float, as DiffBIR does), else the crop."""
        return self.original if self.original is not None else self.crop


@dataclass(frozen=True)
class FaceSelection:
    """Which detected faces to keep (CodeFormer/GFPGAN flags)."""

    only_center_face: bool = False
    largest_face: bool = False
    face_index: int | None = None
    min_face_size: float = 0.0  # minimum eye distance in pixels
    confidence: float = 0.8

    def none_kept(self, found: int, what: str = "face") -> str:
        """Why a photo with ``found`` faces (a clip with ``found`` tracks: ``what="track"``) has none to restore ('' when
        it has none at all): the size floor."""
        if found and self.face_index is not None:
            return f"{what} {self.face_index}'s eye distance is under --min-face-size {self.min_face_size:g} px"
        return (f"{found} {what}{'s' if found > 1 else ''} found, none with an eye distance of --min-face-size "
                f"{self.min_face_size:g} px or more" if found else "")

    def rank(self, box, width: int, height: int) -> float:
        """How well a face's box fits --largest-face (its area), else --only-center-face (minus its centre's
        squared distance to the image's): the higher, the better; for photos and for a clip's tracks alike."""
        x1, y1, x2, y2 = box
        if self.largest_face:
            return (x2 - x1) * (y2 - y1)
        return -(((x1 + x2) / 2 - width / 2) ** 2 + ((y1 + y2) / 2 - height / 2) ** 2)


def load_torch_weights(path: Path) -> dict:
    """Load a ``.pth`` state dict without unpickling code (``weights_only=True``)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path}: refused to load, the file holds more than weights ({exc})".split("\n")[0]) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable PyTorch weight file ({exc})".split("\n")[0]) from None
    if isinstance(state, dict) and "params" in state and isinstance(state["params"], dict):
        state = state["params"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def missing_weight(path: Path, name: str) -> WeightsError:
    return WeightsError(f"missing weight file {path} (get it with: mgfr weights fetch {name})")


class FaceHelper:
    """Detect faces with facexlib RetinaFace, align to FFHQ, paste back with a soft mask."""

    def __init__(
        self,
        model_root: Path,
        detector: str | None = "retinaface_resnet50",  # None: only for already aligned inputs
        face_size: int = 512,
        device: str = "cpu",
        use_parse: bool = True,
    ):
        import torch

        self.device = torch.device(device)
        self.face_size = face_size
        self.template = FFHQ_TEMPLATE_512 * (face_size / 512.0)
        self.detector = self._load_detector(Path(model_root), detector) if detector is not None else None
        self.detector_name = detector
        self.model_root = Path(model_root)
        self.use_parse = use_parse
        self._parser = None  # built on first paste that needs it

    def _load_detector(self, root: Path, detector: str):
        from facexlib.detection.retinaface import RetinaFace

        if detector not in DETECTORS:
            raise ConfigError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
        network, filename = DETECTORS[detector]
        path = root / filename
        if not path.is_file():
            raise missing_weight(path, detector)
        net = RetinaFace(network_name=network, half=False, device=self.device)
        try:
            net.load_state_dict(load_torch_weights(path), strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path}: does not match the {detector} network ({str(exc).splitlines()[0]})") from None
        return net.eval().to(self.device)

    # -- detection ---------------------------------------------------------------------------
    MAX_DETECT_PIXELS = 4_000_000

    def detect(self, rgb: np.ndarray, selection: FaceSelection = FaceSelection()) -> list[DetectedFace]:
        """Faces in an ``(H, W, 3)`` uint8 RGB image, filtered by ``selection``, ordered left to right."""
        return [f for _, f in self.detect_numbered(rgb, selection)[0]]

    def detect_numbered(self, rgb: np.ndarray, selection: FaceSelection = FaceSelection()
                        ) -> tuple[list[tuple[int, DetectedFace]], int]:
        """The faces ``selection`` keeps, each with its number among all the faces found (0 = leftmost, the number
        sidecars and ``mgfr align`` use, whichever are kept), and how many were found."""
        import torch

        if min(rgb.shape[:2]) < 16:
            return [], 0  # too small to hold a face, and too small for RetinaFace's anchor grid
        if self.detector is None:
            raise ConfigError("this FaceHelper was built without a detector (for --has-aligned inputs only)")
        # Detect on a copy of at most ~4 MP: RetinaFace's memory grows with the pixel count (a 100 MP photo took
        # 7 GB), and a face it can find at full size is still 60+ pixels wide there.
        scale = min(1.0, (self.MAX_DETECT_PIXELS / (rgb.shape[0] * rgb.shape[1])) ** 0.5)
        small = rgb if scale == 1.0 else _resize(rgb, scale)
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        with torch.no_grad():
            dets = self.detector.detect_faces(bgr, conf_threshold=selection.confidence)
        dets = np.asarray(dets, np.float32).reshape(-1, 15)
        if scale != 1.0:  # back to the photo: the copy centres pixel p at s*p + (s-1)/2, per axis (cv2.resize)
            sx, sy = small.shape[1] / rgb.shape[1], small.shape[0] / rgb.shape[0]
            dets[:, 0:4:2], dets[:, 5:15:2] = (dets[:, 0:4:2] + 0.5) / sx - 0.5, (dets[:, 5:15:2] + 0.5) / sx - 0.5
            dets[:, 1:4:2], dets[:, 6:15:2] = (dets[:, 1:4:2] + 0.5) / sy - 0.5, (dets[:, 6:15:2] + 0.5) / sy - 0.5
        faces = [
            DetectedFace(box=tuple(float(v) for v in d[:4]), score=float(d[4]),
                         landmarks=np.asarray(d[5:15], np.float32).reshape(5, 2))
            for d in dets
        ]
        faces.sort(key=lambda f: (f.box[0] + f.box[2]) / 2)
        # numbered among every face found, left to right, then kept: a face's number (a sidecar's, --face-index's,
        # align's crop) never depends on --min-face-size, which once gave one person's references to another
        numbered = [(i, f) for i, f in enumerate(faces) if f.eye_distance >= selection.min_face_size]
        if selection.face_index is not None:
            if faces and selection.face_index >= len(faces):
                raise InputError(f"face {selection.face_index} does not exist ({len(faces)} face"
                                 f"{'s' if len(faces) > 1 else ''} found; --face-index counts from 0, left to right)")
            return [n for n in numbered if n[0] == selection.face_index], len(faces)
        if (selection.largest_face or selection.only_center_face) and numbered:
            h, w = rgb.shape[:2]
            return [max(numbered, key=lambda n: selection.rank(n[1].box, w, h))], len(faces)
        return numbered, len(faces)

    # -- alignment -------------------------------------------------------------------------
    def align(self, rgb: np.ndarray, face: DetectedFace, index: int, source: Path | None = None,
              aspect: float = 1.0) -> AlignedFace:
        """Warp one face onto the FFHQ template: a similarity transform, no shear, of the face as it is shown:
        ``aspect`` is a pixel's width over its height (an anamorphic clip's, e.g. 32/27 for widescreen DV), so the
        face is aligned with its true proportions (the paste inverts the whole map)."""
        import cv2

        shown = face.landmarks * np.array([aspect, 1.0])
        affine, _ = cv2.estimateAffinePartial2D(shown, self.template, method=cv2.LMEDS)
        if affine is None:
            raise ValueError("degenerate landmarks")
        affine[:, 0] *= aspect  # stored pixel -> shown -> crop
        crop = cv2.warpAffine(rgb, affine, (self.face_size, self.face_size),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(135, 133, 132))
        return AlignedFace(crop=crop, landmarks=face.landmarks, affine=affine.astype(np.float64), index=index,
                           source=source, score=face.score, box=face.box)

    def detect_and_align(self, rgb: np.ndarray, selection: FaceSelection = FaceSelection(),
                         source: Path | None = None) -> list[AlignedFace]:
        return self.align_faces(rgb, selection, source)[0]

    def align_faces(self, rgb: np.ndarray, selection: FaceSelection = FaceSelection(),
                    source: Path | None = None) -> tuple[list[AlignedFace], int]:
        """:meth:`detect_and_align`, and how many faces the photo has: each kept face keeps its own number (a
        sidecar's ``faces: {2: ...}`` is face 2 whether or not ``--face-index 2`` picked it)."""
        numbered, total = self.detect_numbered(rgb, selection)
        return [self.align(rgb, f, i, source) for i, f in numbered], total

    def as_aligned(self, rgb: np.ndarray, source: Path | None = None) -> AlignedFace:
        """An already aligned face (``--has-aligned``): resized to the face size as DiffBIR resizes it
        (:func:`resize_face`), identity transform; a square one also kept as given, for the restorer."""
        h, w = rgb.shape[:2]
        crop = resize_face(rgb, (self.face_size, self.face_size))
        affine = np.array([[self.face_size / w, 0, 0], [0, self.face_size / h, 0]], np.float64)
        return AlignedFace(crop=crop, landmarks=self.template.copy(), affine=affine, index=0, source=source,
                           original=rgb if h == w and h != self.face_size else None)

    # -- paste back ------------------------------------------------------------------------
    def face_mask(self, crop: np.ndarray) -> np.ndarray:
        """``(S, S)`` float32 soft mask in the crop: ParseNet's face region, or a feathered square."""
        parser = self._get_parser()
        if parser is None:
            return feathered_square(self.face_size)
        return self._parse_mask(parser, crop)

    def paste(self, background: np.ndarray, faces: list[AlignedFace], restored: list[np.ndarray],
              upscale: float | tuple[float, float] = 1.0) -> np.ndarray:
        """Blend ``restored`` crops into ``background`` (the photo resized by ``upscale``, or ``(sx, sy)``: its
        width's and height's factors, as the rounded size gives them).

        ``background`` is ``(H, W)`` or ``(H, W, C)`` of any dtype; the result has the same shape and dtype.
        Outside every mask the pixels are exactly the background's. The crop lands where the resize put the
        photo: ``cv2.resize`` and Real-ESRGAN both centre photo pixel p at ``s * p + (s - 1) / 2`` (facexlib's
        paste adds ``s / 2``, half an output pixel off; none at all is ``(s - 1) / 2`` off). A restored crop may be
        k times the face size (``--face-upsample``): its pixel u is the crop's ``(u + 0.5) / k - 0.5``, the same rule.
        """
        import cv2

        if not faces:
            return background
        h, w = background.shape[:2]
        out = background.astype(np.float32)
        gray = out.ndim == 2
        scale = (65535.0 if background.dtype == np.uint16 else 255.0) / 255.0
        sx, sy = upscale if isinstance(upscale, tuple) else (upscale, upscale)
        for face, img in zip(faces, restored):
            inverse = np.diag([sx, sy]) @ cv2.invertAffineTransform(face.affine)  # crop -> resized photo
            inverse[:, 2] += (0.5 * (sx - 1), 0.5 * (sy - 1))
            k, crop, from_img = img.shape[0] / self.face_size, img, inverse
            if k != 1:  # an enlarged crop: warped from its own pixels; the mask is made at the face size
                crop = cv2.resize(img, (self.face_size,) * 2, interpolation=cv2.INTER_AREA)
                shift = inverse[:, :2] @ np.full((2, 1), (1 / k - 1) / 2)
                from_img = np.hstack([inverse[:, :2] / k, inverse[:, 2:] + shift])
            warped = cv2.warpAffine(img.astype(np.float32) * scale, from_img, (w, h), flags=cv2.INTER_LINEAR)
            mask = cv2.warpAffine(self.face_mask(crop), inverse, (w, h), flags=cv2.INTER_LINEAR)
            mask = np.clip(mask, 0.0, 1.0)
            if gray:
                warped = warped @ np.array([0.299, 0.587, 0.114], np.float32)
                out = out * (1 - mask) + warped * mask
            else:
                m = mask[:, :, None]
                out[:, :, :3] = out[:, :, :3] * (1 - m) + warped * m
        info = np.iinfo(background.dtype) if np.issubdtype(background.dtype, np.integer) else None
        if info is not None:
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(background.dtype)

    def _get_parser(self):
        if not self.use_parse:
            return None
        if self._parser is None:
            path = self.model_root / PARSENET_FILE
            if not path.is_file():
                self.use_parse = False  # documented fallback: a feathered square
                return None
            from facexlib.parsing.parsenet import ParseNet

            net = ParseNet(in_size=512, out_size=512, parsing_ch=19)
            net.load_state_dict(load_torch_weights(path), strict=True)
            self._parser = net.eval().to(self.device)
        return self._parser

    def _parse_mask(self, parser, crop: np.ndarray) -> np.ndarray:
        import cv2
        import torch

        x = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        x = torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None].to(self.device)
        with torch.no_grad():
            labels = parser(x)[0].argmax(dim=1).squeeze(0).cpu().numpy()
        # the ParseNet classes facexlib itself pastes (face, brows, eyes, nose, mouth, ears; not hair, neck, cloth)
        keep = np.isin(labels, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15]).astype(np.float32)
        keep = cv2.resize(keep, (self.face_size, self.face_size), interpolation=cv2.INTER_LINEAR)
        k = max(3, self.face_size // 50) | 1
        keep = cv2.GaussianBlur(cv2.erode(keep, np.ones((k, k), np.uint8)), (0, 0), self.face_size / 50)
        keep[: k, :] = keep[-k:, :] = 0
        keep[:, : k] = keep[:, -k:] = 0
        return keep


def resize_face(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An aligned face (H, W, 3) uint8 resized to ``size`` (width, height) the way DiffBIR resizes aligned faces in
    and out of its face pipeline: bicubic with antialiasing (PIL's kernel, torch's implementation), rounded."""
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size[1], size[0]), mode="bicubic", antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def aligned_output(restored: np.ndarray, width: int, height: int, upscale: float = 1.0) -> np.ndarray:
    """An aligned input's restored face back at the input's size times ``upscale`` (``--has-aligned``), resized as
    DiffBIR resizes its output (:func:`resize_face`); a 512 input at ``upscale`` 1 is the restored face itself."""
    return resize_face(restored, (max(1, round(width * upscale)), max(1, round(height * upscale))))


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def feathered_square(size: int) -> np.ndarray:
    """A square mask that is 1 in the middle and falls to exactly 0 at the border of the crop."""
    import cv2

    mask = np.zeros((size, size), np.float32)
    margin = size // 16
    mask[margin:-margin, margin:-margin] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), size / 40)
    mask[: size // 64 + 1, :] = mask[-(size // 64 + 1):, :] = 0
    mask[:, : size // 64 + 1] = mask[:, -(size // 64 + 1):] = 0
    return mask
