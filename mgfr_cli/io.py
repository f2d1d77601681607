"""Reading and writing photos without losing what the user gave us.

A :class:`Photo` keeps the pixels as decoded (grayscale, RGB or RGBA; 8 or 16 bit), with EXIF
orientation applied, so a restored photo goes back out in the same form (DESIGN.md §2.1).
Writes go to a temporary name beside the target and are renamed into place, so an interrupted run
never leaves a half-written output.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_MEGAPIXELS = 100.0

# EXIF orientation tag value -> (number of 90-degree counter-clockwise turns, mirror first)
_ORIENTATION = {2: (0, True), 3: (2, False), 4: (2, True), 5: (1, True), 6: (3, False), 7: (3, True), 8: (1, False)}


@dataclass(frozen=True)
class Photo:
    """A decoded image.

    ``pixels`` is ``(H, W)`` for grayscale or ``(H, W, 3|4)`` in RGB(A) order, ``uint8`` or ``uint16``.
    """

    pixels: np.ndarray
    path: Path | None = None

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2

    @property
    def has_alpha(self) -> bool:
        return self.pixels.ndim == 3 and self.pixels.shape[2] == 4

    @property
    def max_value(self) -> int:
        return 65535 if self.pixels.dtype == np.uint16 else 255

    def rgb8(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB: what detection, alignment and the restorer see."""
        px = self.pixels
        if px.dtype == np.uint16:
            px = (px.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
        if px.ndim == 2:
            px = np.repeat(px[:, :, None], 3, axis=2)
        return np.ascontiguousarray(px[:, :, :3])


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Photo:
    """Decode ``path`` into a :class:`Photo`; raise :class:`InputError` with a one-line reason."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: empty file")

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half a photo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise InputError(f"{path}: image too large to decode safely (raise --max-megapixels)") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise InputError(f"{path}: not a readable image") from None
        megapixels = im.width * im.height / 1e6
        if megapixels > max_megapixels:
            raise InputError(
                f"{path}: {im.width}x{im.height} is {megapixels:.0f} megapixels, over the limit of "
                f"{max_megapixels:g} (raise it with --max-megapixels)"
            )
        try:
            orientation = im.getexif().get(0x0112, 1)
            im.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{path}: truncated or corrupt image ({exc})") from None
        pixels = _pil_to_array(im, data)
    return Photo(_apply_orientation(pixels, orientation), path)


def _pil_to_array(im, data: bytes) -> np.ndarray:
    """Pillow reads most modes; 16-bit colour PNG/TIFF comes from OpenCV, which keeps the depth."""
    mode = im.mode
    if mode in ("RGB", "RGBA") and im.format in ("PNG", "TIFF"):
        import cv2

        deep = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if deep is not None and deep.dtype == np.uint16 and deep.ndim == 3:
            code = cv2.COLOR_BGRA2RGBA if deep.shape[2] == 4 else cv2.COLOR_BGR2RGB
            return cv2.cvtColor(deep, code)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0, 255).astype(np.uint8)
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))
    if mode == "P":
        has_alpha = "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        return np.asarray(im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))  # RGB, CMYK, YCbCr, LAB, HSV


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    turns, mirror = _ORIENTATION.get(orientation, (0, False))
    if mirror:
        pixels = pixels[:, ::-1]
    if turns:
        pixels = np.rot90(pixels, turns)
    return np.ascontiguousarray(pixels)


def output_format(photo: Photo, requested_ext: str, source: Path) -> str:
    """The extension to write: ``auto`` keeps the input's, but never a format that would drop data."""
    if requested_ext == "auto":
        ext = source.suffix.lower().lstrip(".")
        ext = "jpg" if ext == "jpeg" else ext
        if ext not in ("jpg", "png", "webp", "bmp", "tif", "tiff"):
            ext = "png"
    else:
        ext = requested_ext
    if ext in ("jpg", "bmp", "webp") and (photo.has_alpha or photo.pixels.dtype == np.uint16):
        # JPEG cannot hold alpha or 16 bits: keep the data, change the container.
        return "png" if requested_ext == "auto" else ext
    return ext


def write_image(path: str | Path, pixels: np.ndarray, quality: int = 95) -> None:
    """Encode ``pixels`` (RGB(A) order, like :attr:`Photo.pixels`) and place it at ``path`` atomically."""
    import cv2

    path = Path(path)
    ext = path.suffix.lower()
    px = pixels
    if ext in (".jpg", ".jpeg", ".bmp", ".webp"):
        if px.dtype == np.uint16:
            px = (px.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
        if px.ndim == 3 and px.shape[2] == 4:
            px = px[:, :, :3]
    if px.ndim == 3:
        px = cv2.cvtColor(px, cv2.COLOR_RGBA2BGRA if px.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, px, params)
    if not ok:
        raise InputError(f"{path}: cannot encode an image as {ext}")
    atomic_write_bytes(path, buf.tobytes())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
