"""TIFFs that Pillow cannot decode, read with tifffile: 16-bit gray+alpha, colour of 32-bit integers or floats,
and more than four samples (a retoucher's RGBA with a saved selection or a spot colour channel kept beside it).

The photo comes out as :func:`faces.io.read_image` gives any other: upright, 8 or 16 bits (floats scaled as
Pillow's float TIFFs are: 0..1, else 0..255, to 8 bits; 32-bit integers to 16), gray or RGB, its alpha straight
(premultiplied alpha divided out), its colour profile, XMP, IPTC, density and EXIF text kept; extra channels are
said dropped.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

from mgfr_cli.errors import MgfrError
from mgfr_cli.faces.metadata import Metadata, upright_xmp

MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and big TIFF, either byte order
ALPHA = {1: "associated", 2: "unassociated"}  # ExtraSamples values that are an alpha
MAX_PIXEL_BYTES = 32  # decoded bytes a pixel at most (RGBA of 64-bit floats): --max-megapixels bounds the rest


def is_tiff(data: bytes) -> bool:
    return data[:4] in MAGIC


def read_tiff(data: bytes, check_size: Callable[[int, int], None]) -> tuple[np.ndarray, int, bool, Metadata, str]:
    """``(pixels, orientation, gray_alpha, metadata, note)`` of the first page (pixels as stored, the density as the
    upright ones have it); ``check_size(width, height)`` raises before it is decoded when it is too large;
    ValueError when it is not gray or RGB (palette, CMYK, YCbCr, Lab: Pillow's job) or tifffile cannot decode it."""
    import logging

    import tifffile

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its warnings on a damaged file, while mgfr reads one: the error line says it
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            photometric, extras = int(page.photometric), tuple(int(e) for e in page.extrasamples or ())
            check_size(int(page.imagewidth), int(page.imagelength))
            if page.samplesperpixel * page.dtype.itemsize > MAX_PIXEL_BYTES:  # memory: bounded as Pillow's is
                raise ValueError(f"{page.samplesperpixel} samples of {page.dtype.itemsize * 8} bits a pixel")
            pixels = page.asarray()
            tags = {tag.code: tag.value for tag in page.tags}
            pages = len(tif.pages)
    except MgfrError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile's errors are many kinds: one line for the caller
        said = str(exc) if isinstance(exc, (ValueError, OSError)) else ""  # (tifffile's format errors are these)
        raise ValueError(said if len(said) > 3 else "no image it can decode") from None
    finally:
        logger.setLevel(level)
    if photometric not in (0, 1, 2):  # min-is-white, min-is-black, RGB
        raise ValueError(f"photometric interpretation {photometric} (not gray or RGB)")
    if pixels.ndim == 3 and int(page.planarconfig) == 2:  # planes first
        pixels = np.moveaxis(pixels, 0, -1)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    colours = 3 if photometric == 2 else 1
    alpha = next((colours + i for i, e in enumerate(extras) if e in ALPHA), None)
    kept = [*range(colours), *([alpha] if alpha is not None else [])]
    dropped = pixels.shape[2] - len(kept)
    pixels = _depth(pixels[..., kept])
    top = np.iinfo(pixels.dtype).max
    if photometric == 0:
        pixels[..., :colours] = top - pixels[..., :colours]
    if alpha is not None and extras[alpha - colours] == 1:  # premultiplied: straight colours, as PNG keeps them
        a = np.maximum(pixels[..., -1:].astype(np.float64), 1)
        pixels[..., :-1] = np.clip(np.rint(pixels[..., :-1].astype(np.float64) * top / a), 0, top).astype(pixels.dtype)
    gray_alpha = colours == 1 and alpha is not None
    if gray_alpha:  # held as RGBA, as Pillow's gray+alpha is
        pixels = pixels[..., [0, 0, 0, 1]]
    elif colours == 1:
        pixels = pixels[..., 0]
    notes = [f"{dropped} extra channel(s) not kept (only colour and alpha are)"] if dropped else []
    notes += [f"only the first of {pages} pages restored"] if pages > 1 else []
    orientation = int(tags.get(274, 1))
    return np.ascontiguousarray(pixels), orientation, gray_alpha, _metadata(tags, orientation), "; ".join(notes)


def dropped_by_pillow(im) -> list[str]:
    """What Pillow leaves out of a TIFF it reads: samples beyond its mode's (a spot channel, a saved selection)."""
    samples = getattr(im, "tag_v2", {}).get(277, 0) if im.format == "TIFF" else 0
    extra = int(samples if isinstance(samples, int) else 0) - len(im.getbands())
    return [f"{extra} extra channel(s) not kept (only colour and alpha are)"] if extra > 0 else []


def floats_to_8bit(pixels: np.ndarray) -> np.ndarray:
    """A float image's 8 bits, as for Pillow's float TIFFs: 0..1 is the usual range, else 0..255."""
    px = np.nan_to_num(pixels.astype(np.float32))
    return np.clip(np.rint(px * (255.0 if px.max(initial=0.0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)


def ints_to_depth(pixels: np.ndarray) -> np.ndarray:
    """A 32-bit integer image in 8 or 16 bits. What its values span says what they are, as for floats: a writer that
    kept 8-bit values in 32 bits (Pillow's mode I) gives 0..255, a 16-bit one 0..65535, else the type's whole range
    is used (its top 16 bits); below 0 is black."""
    px = np.clip(pixels.astype(np.int64), 0, None)
    top = int(px.max(initial=0))
    if top <= 255:
        return px.astype(np.uint8)
    if top <= 65535:
        return px.astype(np.uint16)
    return (px >> (8 * pixels.dtype.itemsize - (pixels.dtype.kind == "i") - 16)).astype(np.uint16)


def _depth(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype in (np.uint8, np.uint16):
        return pixels.copy()
    if pixels.dtype == bool:  # bilevel
        return pixels.astype(np.uint8) * 255
    if pixels.dtype.kind == "f":
        return floats_to_8bit(pixels)
    if pixels.dtype.itemsize >= 4:  # 32-bit integers
        return ints_to_depth(pixels)
    return np.clip(pixels.astype(np.int64), 0, None).astype(np.uint16)  # (signed 8/16-bit)


def _metadata(tags: dict, orientation: int) -> Metadata:
    """The profile, XMP, IPTC, density (upright) and text a TIFF's first directory holds (not its EXIF's Exif and
    GPS directories)."""
    def raw(code: int) -> bytes | None:
        value = tags.get(code)
        return bytes(value) if isinstance(value, (bytes, bytearray)) and value else None

    dpi = None
    try:
        x, y = (float(tags[c][0]) / float(tags[c][1]) for c in (282, 283))
        if int(tags.get(296, 2)) in (2, 3) and x > 0 and y > 0:  # inches or centimetres
            dpi = (x, y) if int(tags.get(296, 2)) == 2 else (x * 2.54, y * 2.54)
            dpi = dpi[::-1] if orientation in (5, 6, 7, 8) else dpi
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        pass
    return Metadata(icc=raw(34675), exif=_text_exif(tags), xmp=upright_xmp(raw(700)), dpi=dpi, iptc=raw(33723))


def _text_exif(tags: dict) -> bytes | None:
    """The first directory's text (camera, date, artist, copyright, description, software) as EXIF."""
    from PIL import Image

    exif = Image.Exif()
    for code in (270, 271, 272, 305, 306, 315, 33432):
        if isinstance(tags.get(code), str) and tags[code]:
            exif[code] = tags[code]
    return exif.tobytes() if len(exif) else None
