"""What a photo carries besides its pixels, kept from the input into the restored output: the colour profile (when
it describes the output's pixels), the EXIF (date, camera, place) and the XMP (ratings, keywords, people), both with
their orientation set to 1 because the pixels are turned upright when read."""

from __future__ import annotations

import re

import numpy as np

# TIFF tags that describe how the file's own pixels are laid out (a TIFF's EXIF is its IFD0): never carried over
LAYOUT_TAGS = {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 292, 293, 317, 320, 322, 323, 324,
               325, 338, 339, 340, 341, 513, 514, 529, 530, 531, 532}


def upright_xmp(xmp) -> bytes | None:
    """The XMP packet with its orientation (attribute or element) set to 1, as the pixels are upright."""
    if not xmp:
        return None
    xmp = xmp.encode() if isinstance(xmp, str) else bytes(xmp)
    xmp = re.sub(rb'(tiff:Orientation\s*=\s*["\'])\d(["\'])', rb"\g<1>1\2", xmp)
    return re.sub(rb"(<tiff:Orientation>)\s*\d\s*(</tiff:Orientation>)", rb"\g<1>1\2", xmp)


def upright_exif(im) -> bytes | None:
    """The image's EXIF as bytes with its orientation set to 1 (the pixels are turned upright) and without the
    thumbnail (it shows the unrestored photo); None when it has none or it does not parse."""
    from PIL import Image

    try:
        if not len(im.getexif()):
            return None
        exif = Image.Exif()  # a copy: the image's own (a caller's PIL image) is left as it is
        exif.load(im.getexif().tobytes())
        for tag in LAYOUT_TAGS & set(exif):  # a TIFF's own layout (sizes, strips, samples): not the output's
            del exif[tag]
        exif[0x0112] = 1
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - a malformed EXIF block is metadata lost, never a photo failed
        return None


def fitting_profile(icc: bytes | None, pixels: np.ndarray) -> bytes | None:
    """``icc`` when it describes pixels like these (its colour space RGB, or GRAY for gray ones); else None: a CMYK
    photo's profile, once the photo is converted to RGB, describes no pixel of it."""
    gray = pixels.ndim == 2 or pixels.shape[2] == 2
    return icc if icc and icc[16:20] == (b"GRAY" if gray else b"RGB ") else None


JPEG_SEGMENT = 65000  # what a JPEG's APP1 segment holds (64 KB, less its headers), EXIF and XMP alike


def sized_exif(exif: bytes, width: int, height: int, limit: int | None = None) -> bytes | None:
    """``exif`` with the pixel dimensions it records (if any) set to the written image's (``--upscale``); over
    ``limit`` bytes (a JPEG's), without its maker note and user comment, else None (a PNG's or a HEIC's EXIF may be
    larger than a JPEG can hold)."""
    from PIL import Image

    parsed = Image.Exif()
    parsed.load(exif)
    sub = parsed.get_ifd(0x8769)  # the Exif IFD: PixelXDimension, PixelYDimension
    for tag, value in ((0xA002, width), (0xA003, height)):
        if tag in sub:
            sub[tag] = value
    data = parsed.tobytes()
    if limit is not None and len(data) > limit:
        for tag in (0x927C, 0x9286):  # MakerNote, UserComment: the large ones
            sub.pop(tag, None)
        data = parsed.tobytes()
    return data if limit is None or len(data) <= limit else None


def save_options(fmt: str, pixels: np.ndarray, icc: bytes | None, exif: bytes | None, xmp: bytes | None) -> dict:
    """Pillow's ``save`` keywords that embed the metadata in a ``fmt`` file (the caller passes EXIF and XMP only for
    JPEG, PNG and WebP)."""
    extra: dict = {}
    if icc:
        extra["icc_profile"] = icc
    if exif:
        exif = sized_exif(exif, pixels.shape[1], pixels.shape[0], JPEG_SEGMENT if fmt == "JPEG" else None)
        if exif:
            extra["exif"] = exif
    if xmp and fmt == "PNG":  # Pillow writes a PNG's XMP as the iTXt chunk readers look for
        from PIL import PngImagePlugin

        extra["pnginfo"] = PngImagePlugin.PngInfo()
        extra["pnginfo"].add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
    elif xmp and (fmt != "JPEG" or len(xmp) <= JPEG_SEGMENT):  # (no extended XMP in JPEG)
        extra["xmp"] = xmp
    return extra
