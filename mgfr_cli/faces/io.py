"""Reading and writing photos without losing what the user gave us.

A :class:`Photo` keeps the pixels as decoded (grayscale, RGB or RGBA; 8 or 16 bit), with EXIF
orientation applied, so a restored photo goes back out in the same form (docs/design.md §2.1).
Writes go to a temporary name beside the target and are renamed into place, so an interrupted run
never leaves a half-written output.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgfr_cli.errors import InputError
from mgfr_cli.faces.metadata import (Metadata, appended_parts, cmyk_by_profile, deep_tiff, metadata_of,
                                     png_gray_alpha, png_with, save_options)
from mgfr_cli.faces.tiff import dropped_by_pillow, floats_to_8bit, ints_to_depth, is_tiff, read_tiff
from mgfr_cli.files import atomic_write_bytes

# The one list of formats mgfr reads, by name and in folder walks alike (GIF and AVIF: first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif",
                    ".heic", ".heif")  # (.jfif: what Windows names a JPEG saved from a browser)
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mts", ".m2ts", ".mpg", ".mpeg", ".vob", ".3gp", ".wmv", ".flv")
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
    meta: Metadata = Metadata()  # profile, EXIF, XMP, density, text, IPTC: written back into the output
    note: str = ""  # what could not be kept (e.g. frames of an animation), for the run's summary
    gray_alpha: bool = False  # a gray+alpha source held as RGBA here: written back as gray+alpha

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


def is_video_file(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _open_heif() -> None:
    """Teach Pillow HEIC/HEIF (iPhone photos) once, with pillow-heif (it turns them upright itself, as TIFFs)."""
    global _HEIF
    if not _HEIF:
        _HEIF = True
        try:
            import pillow_heif
        except ImportError:  # (a dependency: only a broken install lacks it) HEIC then fails as not readable
            return
        pillow_heif.register_heif_opener()


_HEIF = False


def read_image(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Photo:
    """Decode ``path`` into a :class:`Photo`; raise :class:`InputError` with a one-line reason."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    import stat

    path = Path(path)
    # Only regular files, read with a cap: a FIFO would block forever, /dev/zero would never end.
    limit = max(64 << 20, int(max_megapixels * 1e6 * 8))  # 8 bytes a pixel: raw 16-bit RGBA
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file (a FIFO, device or socket); not read")
        if st.st_size > limit:
            raise InputError(f"{path}: {st.st_size / 1e6:.0f} MB is more than an image of --max-megapixels "
                             f"{max_megapixels:g} can take; not read")
        with open(path, "rb") as fh:  # the size it had: a file still growing is read up to that, plus one byte
            data = fh.read(st.st_size + 1)
        if len(data) > limit:
            raise InputError(f"{path}: larger than {limit / 1e6:.0f} MB; not read")
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: empty file")

    _open_heif()
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half a photo
    Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1e6)  # --max-megapixels decides, not Pillow's own default

    def check_size(width: int, height: int) -> None:
        if width * height / 1e6 > max_megapixels:
            raise InputError(f"{path}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the limit of "
                             f"{max_megapixels:g} (raise it with --max-megapixels)")

    with warnings.catch_warnings(record=True) as warned:  # (Pillow's words on a damaged EXIF name no file)
        warnings.simplefilter("always", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise InputError(f"{path}: image too large to decode safely (raise --max-megapixels)") from None
        except (UnidentifiedImageError, OSError, ValueError):
            return _tiff_photo(data, path, check_size, "not a readable image")
        check_size(im.width, im.height)
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as exc:
            return _tiff_photo(data, path, check_size, f"truncated or corrupt image ({exc})")
        return _pil_photo(im, data, path, warned)


def _tiff_photo(data: bytes, path: Path, check_size, why: str) -> Photo:
    """A TIFF Pillow could not decode, read with tifffile (:mod:`faces.tiff`); else ``why`` Pillow could not."""
    if not is_tiff(data):
        raise InputError(f"{path}: {why}")
    try:
        pixels, orientation, gray_alpha, meta, note = read_tiff(data, check_size)
    except ValueError as exc:
        raise InputError(f"{path}: {why}; nor by tifffile ({exc})") from None
    return Photo(_apply_orientation(pixels, orientation), path, meta, note, gray_alpha)


def _pil_photo(im, data: bytes = b"", path: Path | None = None, warned: list = ()) -> Photo:
    """The :class:`Photo` of a loaded PIL image (a file's, with its ``data``, or a caller's): upright by its EXIF
    orientation, read after loading (Pillow turns a TIFF, pillow-heif a HEIC, upright itself and drops the tag),
    its metadata kept, what is not kept said in its note (frames after the first, channels, a phone's appendices, a
    damaged EXIF: the warnings :func:`read_image` records while it opens and reads the file, ``warned``)."""
    frames, at = getattr(im, "n_frames", 1), im.tell() if hasattr(im, "tell") else 0  # (a caller's: the one shown)
    shown = f"only frame {at + 1} of {frames} restored" if at else f"only the first of {frames} frames restored"
    notes = [shown] * (frames > 1) + dropped_by_pillow(im) + appended_parts(im.info)
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the pixels as they are
        orientation = 1
    meta = metadata_of(im, orientation)
    notes += ["its metadata is damaged (kept as far as it reads)"] * any(  # (Pillow's EXIF and TIFF tag reader's
        word in str(w.message).lower() for w in warned for word in ("corrupt", "truncated"))  # words)
    # gray+alpha: Pillow's LA, and 16-bit PNGs of colour type 4 (which Pillow reports as RGBA)
    gray_alpha = im.mode in ("LA", "La") or (data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[25] == 4)
    return Photo(_apply_orientation(_pil_to_array(im, data), orientation), path, meta, "; ".join(notes), gray_alpha)


def as_gray_alpha(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` RGBA -> ``(H, W, 2)`` gray (luma) + alpha, same dtype."""
    luma = pixels[:, :, :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    info = np.iinfo(pixels.dtype)
    return np.dstack([np.clip(np.rint(luma), info.min, info.max).astype(pixels.dtype), pixels[:, :, 3]])


def photo_of(image) -> Photo:
    """A :class:`Photo` of an in-memory image, in its own form: a PIL image (any mode, turned upright by its EXIF
    orientation as a file is, its metadata kept) or a ``(H, W)``, ``(H, W, 2|3|4)``
    uint8/uint16 array (gray, gray+alpha, RGB, RGBA)."""
    dims = tuple(image.size) if hasattr(image, "convert") else np.shape(image)
    if 0 in dims:
        raise InputError(f"the image has no pixels (its size is {dims})")
    if hasattr(image, "convert"):  # PIL: as a file is read (Image.open's are lazy: loaded first, as a file's)
        image.load()
        return _pil_photo(image)
    px = np.asarray(image)
    if px.dtype not in (np.uint8, np.uint16) or not (px.ndim == 2 or (px.ndim == 3 and px.shape[2] in (2, 3, 4))):
        raise InputError(f"an image array is (H, W) or (H, W, 2|3|4) of uint8 or uint16, not {px.shape} {px.dtype}")
    if px.ndim == 3 and px.shape[2] == 2:  # gray+alpha, held as RGBA (as a gray+alpha file is)
        return Photo(np.ascontiguousarray(px[:, :, [0, 0, 0, 1]]), gray_alpha=True)
    return Photo(np.ascontiguousarray(px))


def _is_deep(im, data: bytes) -> bool:
    """A PNG or TIFF of 16 bits a sample, which Pillow reads as 8-bit RGB(A)."""
    if im.format == "PNG":
        return len(data) > 24 and data[24] == 16  # IHDR's bit depth
    bits = getattr(im, "tag_v2", {}).get(258, ()) if im.format == "TIFF" else ()
    return 16 in (bits if isinstance(bits, tuple) else (bits,))


def _pil_to_array(im, data: bytes) -> np.ndarray:
    """Pillow reads most modes; 16-bit colour PNG/TIFF comes from OpenCV, which keeps the depth."""
    mode = im.mode
    if data and mode in ("RGB", "RGBA") and _is_deep(im, data):  # (an 8-bit one is not decoded twice)
        import cv2

        deep = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if deep is not None and deep.dtype == np.uint16 and deep.ndim == 3:
            code = cv2.COLOR_BGRA2RGBA if deep.shape[2] == 4 else cv2.COLOR_BGR2RGB
            return cv2.cvtColor(deep, code)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16)
    if mode == "I":  # 32-bit integers; Pillow holds an unsigned TIFF's as signed (above 2**31: below 0)
        px = np.asarray(im, dtype=np.int32)
        kind = getattr(im, "tag_v2", {}).get(339, 1) if im.format == "TIFF" else 2  # SampleFormat: 1 unsigned
        unsigned = 2 not in (kind if isinstance(kind, tuple) else (kind,))
        return ints_to_depth(px.view(np.uint32) if unsigned else px)
    if mode == "F":  # float TIFF
        return floats_to_8bit(np.asarray(im, dtype=np.float32))
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))
    if mode == "P":
        has_alpha = "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):  # (Pillow takes premultiplied gray to RGBA only through LA)
        return np.asarray((im.convert("LA") if mode == "La" else im).convert("RGBA"))
    by_profile = cmyk_by_profile(im)  # (a CMYK photo's profile says what its inks look like)
    return by_profile if by_profile is not None else np.asarray(im.convert("RGB"))  # RGB, CMYK, YCbCr, LAB, HSV


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    turns, mirror = _ORIENTATION.get(orientation, (0, False))
    if mirror:
        pixels = pixels[:, ::-1]
    if turns:
        pixels = np.rot90(pixels, turns)
    return np.ascontiguousarray(pixels)


WRITABLE = ("jpg", "png", "webp", "bmp", "tif", "tiff")


def plain_ext(requested_ext: str, source: Path) -> str:
    """The extension ``requested_ext`` gives ``source`` before looking at its pixels (``auto``: the input's,
    ``jpeg``, ``jfif``, ``jpe`` as ``jpg``, formats mgfr does not write as ``png``)."""
    if requested_ext != "auto":
        return requested_ext
    ext = source.suffix.lower().lstrip(".")
    ext = "jpg" if ext in ("jpeg", "jfif", "jpe") else ext
    return ext if ext in WRITABLE else "png"


def same_photo(a: Path, b: Path) -> bool:
    """The same file, or a copy of it (the same bytes: ``IMG_1 (1).jpg``, an upload of it)."""
    import filecmp

    try:  # (two stats: resolving both paths cost 0.2 ms a pair, a 200-photo references folder 40 ms a face)
        sa, sb = os.stat(a), os.stat(b)
        return os.path.samestat(sa, sb) or (sa.st_size == sb.st_size and filecmp.cmp(a, b, shallow=False))
    except OSError:
        return False


def output_format(photo: Photo, requested_ext: str, source: Path) -> str:
    """The extension to write: ``auto`` keeps the input's, but never a format that would drop data."""
    ext = plain_ext(requested_ext, source)
    if format_drops(photo, ext) and requested_ext == "auto":  # keep the data, change the container
        return "png"
    return ext


def format_drops(photo: Photo, ext: str) -> list[str]:
    """What a file of ``ext`` is written without (:func:`write_image`): the photo's alpha, its 16 bits."""
    ext = ext.lower().lstrip(".")
    if ext not in ("jpg", "jpeg", "bmp", "webp"):
        return []
    return [what for what, lost in (("alpha", photo.has_alpha and ext != "webp"),
                                    ("16 bits", photo.pixels.dtype == np.uint16)) if lost]


def write_image(path: str | Path, pixels: np.ndarray, quality: int = 95, meta: Metadata = Metadata()) -> None:
    """Encode ``pixels`` (RGB(A) order, like :attr:`Photo.pixels`; ``(H, W, 2)``: gray+alpha) and place it at
    ``path`` atomically, with what its format holds of ``meta`` (:meth:`Metadata.for_file`), in every format and
    depth mgfr writes."""
    import cv2

    path = Path(path)
    ext = path.suffix.lower()
    px = pixels
    if px.ndim == 3 and px.shape[2] == 2 and ext not in (".png", ".tif", ".tiff"):  # gray+alpha: PNG, TIFF hold it
        px = np.ascontiguousarray(px[:, :, [0, 0, 0, 1]] if ext == ".webp" else px[:, :, 0])  # WebP's alpha: RGBA
    if ext in (".jpg", ".jpeg", ".bmp", ".webp"):
        if px.dtype == np.uint16:
            px = (px.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
        if px.ndim == 3 and px.shape[2] == 4 and ext != ".webp":  # WebP holds alpha (its 8 bits only)
            px = px[:, :, :3]
    meta = meta.for_file(ext, px)
    gray_alpha = px.ndim == 3 and px.shape[2] == 2
    if ext in (".tif", ".tiff") and px.dtype == np.uint16:
        atomic_write_bytes(path, deep_tiff(px, meta))
    elif ext == ".png":  # OpenCV's encoder (5x Pillow's speed; 16 bits), the metadata's chunks added
        atomic_write_bytes(path, png_with(png_gray_alpha(px) if gray_alpha else _cv2_encode(path, px, []), meta))
    elif meta or gray_alpha:  # Pillow writes the metadata (and a gray+alpha TIFF)
        from PIL import Image

        buf = io.BytesIO()
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[ext]
        extra = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
        try:
            Image.fromarray(px).save(buf, fmt, **extra, **save_options(fmt, meta))
        except ValueError:  # metadata Pillow will not write (too long, malformed): never the pixels lost for it
            buf = io.BytesIO()
            Image.fromarray(px).save(buf, fmt, **extra)
        atomic_write_bytes(path, buf.getvalue())
    else:
        atomic_write_bytes(path, _cv2_encode(path, px, [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg")
                                             else []))


def _cv2_encode(path: Path, px: np.ndarray, params: list) -> bytes:
    import cv2

    if px.ndim == 3:
        px = cv2.cvtColor(px, cv2.COLOR_RGBA2BGRA if px.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix.lower(), px, params)
    if not ok:
        raise InputError(f"{path}: cannot encode an image as {path.suffix.lower()}")
    return buf.tobytes()
