"""What a photo carries besides its pixels (:class:`Metadata`), kept from the input into the restored output.

Read once (:func:`metadata_of`), written by :func:`faces.io.write_image` in what each format holds
(:meth:`Metadata.for_file`): Pillow writes them into JPEG, WebP, 8-bit TIFF and BMP files; PNGs (encoded by OpenCV,
faster than Pillow) and 16-bit TIFFs get them here (:func:`png_with`, :func:`deep_tiff`). What describes the input's
own bytes (a TIFF's layers, a phone's appended clip) is left out and said (:func:`appended_parts`); a CMYK photo's
profile converts its pixels (:func:`cmyk_by_profile`).
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import uuid
import zlib
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Metadata:
    """A photo's metadata: EXIF and XMP with their orientation set to 1 (the pixels are turned upright when read),
    the colour profile, the pixel density (a scan's dots per inch, upright), text (a PNG's title, author, comments,
    a generator's ``parameters``; a JPEG's ``Comment``), the IPTC-IIM block of older captioning tools and a PNG's
    colour chunks (its gamma: browsers show an old Mac's 1.8-gamma PNG by it)."""

    icc: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    text: tuple[tuple[str, str], ...] = ()
    iptc: bytes | None = None
    png_colour: tuple[tuple[bytes, bytes], ...] = ()  # a PNG's sRGB, gAMA, cHRM chunks (name, body): how to show it

    def scaled(self, factor: float) -> "Metadata":
        """For an output ``factor`` times the photo's size: the density scaled, so it prints at the same size."""
        return replace(self, dpi=(self.dpi[0] * factor, self.dpi[1] * factor)) if self.dpi else self

    def for_file(self, ext: str, pixels: np.ndarray) -> "Metadata":
        """What a ``ext`` file of ``pixels`` holds of it: the profile where it describes them; EXIF and XMP but in
        BMP, their pixel size and density the image's (the EXIF trimmed to a JPEG's segment); text whole in PNG, the
        ``Comment`` in JPEG; IPTC in JPEG and TIFF; the colour chunks in PNG."""
        jpeg, exif = ext in (".jpg", ".jpeg"), None
        if self.exif and ext != ".bmp":
            exif = sized_exif(self.exif, pixels.shape[1], pixels.shape[0], JPEG_SEGMENT if jpeg else None, self.dpi)
        xmp = None
        if self.xmp and ext != ".bmp":
            xmp = new_instance(sized_xmp(self.xmp, pixels.shape[1], pixels.shape[0], self.dpi), pixels)
        return Metadata(fitting_profile(self.icc, pixels), exif, xmp, self.dpi,
                        self.text if ext == ".png" else tuple((k, v) for k, v in self.text if k == "Comment" and jpeg),
                        self.iptc if jpeg or ext in (".tif", ".tiff") else None,
                        self.png_colour if ext == ".png" else ())

    def pil_info(self, pixels: np.ndarray) -> dict:
        """Where Pillow keeps them in an image's ``info`` (``save(..., exif=im.info["exif"])`` writes them back), as
        a file of ``pixels`` holds them (the profile where it fits, the EXIF's and XMP's pixel size and density)."""
        meta = self.for_file(".png", pixels)
        pairs = (*meta.text, ("icc_profile", meta.icc), ("exif", meta.exif), ("xmp", meta.xmp), ("dpi", meta.dpi))
        return {k: v for k, v in pairs if v}

    def __bool__(self) -> bool:
        return any((self.icc, self.exif, self.xmp, self.dpi, self.text, self.iptc, self.png_colour))


def metadata_of(im, orientation: int = 1) -> Metadata:
    """The metadata of a loaded PIL image whose pixels are turned upright from ``orientation``."""
    return Metadata(im.info.get("icc_profile") or None, upright_exif(im), upright_xmp(im.info.get("xmp")),
                    density(im, orientation), texts(im), iptc_of(im), png_colour(im))


# TIFF tags that describe how the file's own pixels are laid out (a TIFF's EXIF is its IFD0): never carried over
LAYOUT_TAGS = {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 292, 293, 317, 320, 322, 323, 324,
               325, 338, 339, 340, 341, 513, 514, 529, 530, 531, 532}
# IFD0 tags of a TIFF's (or an odd EXIF's) that are not carried in the EXIF either: those that hold the unrestored
# pixels or point into the input's bytes (SubIFDs, Photoshop's resources with their thumbnail, its layers, which
# Photoshop opens instead of the pixels), and those carried on their own (the profile, by the fitting rule; XMP,
# upright; IPTC)
STALE_TAGS = {330, 34377, 37724, 34675, 700, 33723}
# XMP properties of what is not carried into the output: a thumbnail of the unrestored photo, a motion photo's clip
# and an HDR photo's gain map (Ultra HDR's, appended to the file; an iPhone HEIC's, an auxiliary image): a reader of
# the output's XMP would look for them
XMP_STALE = re.compile(rb'\s(?:GCamera:(?:MotionPhoto|MicroVideo)\w*|hdrgm:\w+|HDRGainMap:\w+)\s*=\s*(["\']).*?\1'
                       rb'|<((?:xmp|xap):Thumbnails|Container:Directory|GCamera:(?:MotionPhoto|MicroVideo)\w*'
                       rb'|hdrgm:\w+|HDRGainMap:\w+)\b[^>]*?(?:/>|>.*?</\2\s*>)', re.S)


def upright_xmp(xmp) -> bytes | None:
    """The XMP packet with its orientation (attribute or element) set to 1, as the pixels are upright."""
    if not xmp:
        return None
    xmp = xmp.encode() if isinstance(xmp, str) else bytes(xmp)
    return XMP_STALE.sub(b"", xmp_set(xmp, {"tiff:Orientation": 1}))


def appended_parts(info: dict) -> list[str]:
    """What a phone adds to a photo's file beside its picture, named in its XMP (or, for a HEIC, in pillow-heif's
    ``info``: a PIL image's), which the restored copy does not hold."""
    xmp = info.get("xmp") or b""
    xmp = xmp.encode() if isinstance(xmp, str) else bytes(xmp)
    gain_map = any("hdrgainmap" in str(kind).lower() for kind in info.get("aux", {}))  # (an iPhone HEIC's)
    parts = (("motion photo's clip", False,
              rb"GCamera:(?:MotionPhoto|MicroVideo)(?:\s*=\s*[\"']|>)1|Item:Semantic=[\"']MotionPhoto"),
             ("HDR gain map (shown as SDR)", gain_map,
              rb"hdrgm:Version|HDRGainMap:HDRGainMapVersion|Item:Semantic=[\"']GainMap"),
             ("depth map (a portrait's)", bool(info.get("depth_images")), None))
    return [f"its {name} not kept" for name, found, pattern in parts
            if found or (pattern and re.search(pattern, xmp))]


def xmp_set(xmp: bytes, values: dict[str, object]) -> bytes:
    """``xmp`` with the numbers (or rationals) it records (attribute or element) under a name of ``values`` set to
    its value there."""
    for name, value in values.items():
        key, value = re.escape(name.encode()), str(value).encode()
        xmp = re.sub(rb'(\s' + key + rb'\s*=\s*["\'])[\d./]+(["\'])', lambda m: m[1] + value + m[2], xmp)
        xmp = re.sub(rb"(<" + key + rb">)\s*[\d./]+\s*(</" + key + rb">)", lambda m: m[1] + value + m[2], xmp)
    return xmp


def sized_xmp(xmp: bytes, width: int, height: int, dpi: tuple[float, float] | None) -> bytes:
    """``xmp`` with the pixel size and density it records (if any) set to the written image's, as in its EXIF."""
    values: dict[str, object] = {"tiff:ImageWidth": width, "tiff:ImageLength": height,
                                 "exif:PixelXDimension": width, "exif:PixelYDimension": height}
    if dpi:
        x, y = (f"{round(v)}/1" if abs(v - round(v)) < 1e-6 else f"{round(v * 10000)}/10000" for v in dpi)
        values.update({"tiff:XResolution": x, "tiff:YResolution": y, "tiff:ResolutionUnit": 2})  # (in inches)
    return xmp_set(xmp, values)


INSTANCE_ID = re.compile(rb'(\sxmpMM:InstanceID\s*=\s*(["\'])).*?(\2)|(<xmpMM:InstanceID>)[^<]*(</xmpMM:InstanceID>)')


def new_instance(xmp: bytes, pixels: np.ndarray) -> bytes:
    """``xmp`` with an ``xmpMM:InstanceID`` of its own: the restored file is a new instance of the photo's document
    (its ``DocumentID`` kept), not the photo's file, which a catalogue would take it for. Made from the pixels, so a
    rerun writes the same bytes."""
    if b"InstanceID" not in xmp:
        return xmp
    digest = hashlib.blake2b(np.ascontiguousarray(pixels), digest_size=16).digest()
    iid = b"xmp.iid:" + str(uuid.UUID(bytes=digest)).encode()
    return INSTANCE_ID.sub(lambda m: (m[1] + iid + m[3]) if m[1] else (m[4] + iid + m[5]), xmp)


def upright_exif(im) -> bytes | None:
    """The image's EXIF as bytes with its orientation set to 1 (the pixels are turned upright) and without the
    thumbnail (it shows the unrestored photo); None when it has none or it does not parse."""
    from PIL import Image

    try:
        if not len(im.getexif()):
            return None
        exif = Image.Exif()  # a copy: the image's own (a caller's PIL image) is left as it is
        exif.load(im.getexif().tobytes())
        for tag in (LAYOUT_TAGS | STALE_TAGS) & set(exif):  # a TIFF's own layout (sizes, strips), its layers...
            del exif[tag]
        exif[0x0112] = 1
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - a malformed EXIF block is metadata lost, never a photo failed
        return None


def cmyk_by_profile(im) -> np.ndarray | None:
    """A CMYK image's RGB pixels by its CMYK colour profile (littleCMS through Pillow's ImageCms: relative
    colorimetric with black point compensation, Photoshop's default conversion, into sRGB); None without a usable
    one (Pillow's formula then, which ignores the inks' real colours)."""
    icc = im.info.get("icc_profile")
    if im.mode != "CMYK" or not icc or icc[16:20] != b"CMYK":
        return None
    from PIL import ImageCms

    try:
        return np.asarray(ImageCms.profileToProfile(
            im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"),
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB",
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):  # a damaged profile: the formula's colours
        return None


def fitting_profile(icc: bytes | None, pixels: np.ndarray) -> bytes | None:
    """``icc`` when it describes pixels like these (its colour space RGB, or GRAY for gray ones); else None: a CMYK
    photo's profile, once the photo is converted to RGB, describes no pixel of it."""
    gray = pixels.ndim == 2 or pixels.shape[2] == 2
    return icc if icc and icc[16:20] == (b"GRAY" if gray else b"RGB ") else None


# ImageMagick's hex copies of a PNG's EXIF and XMP: their orientation is the stored pixels', not the upright output's
RAW_PROFILES = {"Raw profile type exif", "Raw profile type APP1", "Raw profile type xmp"}
JPEG_SEGMENT = 65000  # what a JPEG's APP1 segment holds (64 KB, less its headers), EXIF and XMP alike


def sized_exif(exif: bytes, width: int, height: int, limit: int | None = None,
               dpi: tuple[float, float] | None = None) -> bytes | None:
    """``exif`` with the pixel dimensions and density it records (if any) set to the written image's (``--upscale``);
    over ``limit`` bytes (a JPEG's), without its maker note and user comment, else None (a PNG's or a HEIC's EXIF may
    be larger than a JPEG can hold)."""
    from PIL import Image, TiffImagePlugin

    parsed = Image.Exif()
    parsed.load(exif)
    sub = parsed.get_ifd(0x8769) if 0x8769 in parsed else {}  # the Exif IFD: PixelXDimension, PixelYDimension
    for tag, value in ((0xA002, width), (0xA003, height)):
        if tag in sub:
            sub[tag] = value
    if dpi and 0x011A in parsed:  # XResolution, YResolution: in inches, as the density is written
        parsed[0x011A], parsed[0x011B] = (TiffImagePlugin.IFDRational(round(v, 4)) for v in dpi)
        parsed[0x0128] = 2
    data = parsed.tobytes()
    if limit is not None and len(data) > limit:
        for tag in (0x927C, 0x9286):  # MakerNote, UserComment: the large ones
            sub.pop(tag, None)
        data = parsed.tobytes()
    return data if limit is None or len(data) <= limit else None


def save_options(fmt: str, meta: Metadata) -> dict:
    """Pillow's ``save`` keywords that embed ``meta`` (:meth:`Metadata.for_file`'s) in a ``fmt`` file (JPEG, WebP,
    TIFF, BMP; PNGs get theirs from :func:`png_with`)."""
    extra: dict = {"dpi": meta.dpi} if meta.dpi and fmt != "WEBP" else {}  # (WebP's density is its EXIF's)
    comment = dict(meta.text).get("Comment")
    if fmt == "JPEG" and comment:
        extra["comment"] = comment.encode("utf-8")
    if fmt == "JPEG" and meta.iptc:
        extra["extra"] = iptc_segment(meta.iptc)  # (Pillow's key for segments it writes as given)
    if meta.icc:
        extra["icc_profile"] = meta.icc
    if fmt == "TIFF":  # a TIFF's EXIF is its first directory: XMP, IPTC and the predictor go there too
        from PIL import Image

        tags = Image.Exif()
        if meta.exif:
            tags.load(meta.exif)
        if meta.xmp:
            tags[700] = meta.xmp
        if meta.iptc:
            tags[33723] = meta.iptc
        if any(k in tags and tags.get_ifd(k) for k in (0x8769, 0x8825)):  # only Pillow's own writer keeps them (raw)
            return {**extra, "exif": tags}
        tags[317] = 2  # LZW with horizontal differencing, as OpenCV writes a TIFF (raw is 2.4x larger)
        return {**extra, "exif": tags, "compression": "tiff_lzw"}
    if meta.exif:
        extra["exif"] = meta.exif
    if meta.xmp and (fmt != "JPEG" or len(meta.xmp) <= JPEG_SEGMENT):  # (no extended XMP in JPEG)
        extra["xmp"] = meta.xmp
    return extra


def iptc_of(im) -> bytes | None:
    """The IPTC-IIM block (captions, keywords, credits) of a JPEG (Photoshop's APP13 resource 0x0404) or a TIFF
    (tag 33723), as bytes; None when it has none."""
    if im.format == "TIFF":
        value = getattr(im, "tag_v2", {}).get(33723)
        return bytes(value) if isinstance(value, bytes) and value else None
    data = b"".join(body[14:] for kind, body in getattr(im, "applist", ())
                    if kind == "APP13" and body.startswith(b"Photoshop 3.0\0"))
    at = 0
    while data[at:at + 4] == b"8BIM" and at + 12 <= len(data):  # id, padded Pascal name, size, padded data
        ident = int.from_bytes(data[at + 4:at + 6], "big")
        at += 6 + ((data[at + 6] + 2) & ~1)
        size = int.from_bytes(data[at:at + 4], "big")
        if ident == 0x0404:
            return data[at + 4:at + 4 + size] or None
        at += 4 + size + (size & 1)
    return None


def iptc_segment(iim: bytes) -> bytes:
    """A JPEG APP13 segment holding ``iim`` as Photoshop's IPTC resource; empty when it does not fit one."""
    body = b"Photoshop 3.0\0" + b"8BIM\x04\x04\0\0" + struct.pack(">I", len(iim)) + iim + b"\0" * (len(iim) & 1)
    return b"\xff\xed" + struct.pack(">H", 2 + len(body)) + body if len(body) <= 65533 else b""


def texts(im) -> tuple[tuple[str, str], ...]:
    """A PNG's text chunks but its XMP and ImageMagick's raw EXIF/XMP copies (which hold the old orientation), and a
    JPEG's or GIF's comment (as ``Comment``; UTF-8, else Latin-1)."""
    if im.format == "PNG":
        return tuple((str(k), str(v)) for k, v in getattr(im, "text", {}).items()
                     if k != "XML:com.adobe.xmp" and k not in RAW_PROFILES)
    comment = im.info.get("comment") if im.format in ("JPEG", "GIF") else None
    if not comment:
        return ()
    if isinstance(comment, bytes):
        try:
            comment = comment.decode("utf-8")
        except UnicodeDecodeError:
            comment = comment.decode("latin-1")
    return (("Comment", comment),)


def png_colour(im) -> tuple[tuple[bytes, bytes], ...]:
    """A PNG's sRGB, gAMA and cHRM chunks, rebuilt from what Pillow read of them."""
    if im.format != "PNG":
        return ()
    info, chunks = im.info, []
    try:
        if "srgb" in info:
            chunks.append((b"sRGB", bytes([int(info["srgb"])])))
        if info.get("gamma"):
            chunks.append((b"gAMA", struct.pack(">I", round(float(info["gamma"]) * 100000))))
        if len(info.get("chromaticity", ())) == 8:
            chunks.append((b"cHRM", struct.pack(">8I", *(round(float(v) * 100000) for v in info["chromaticity"]))))
    except (TypeError, ValueError, struct.error):  # a malformed chunk: left out
        return ()
    return tuple(chunks)


def density(im, orientation: int = 1) -> tuple[float, float] | None:
    """The image's pixel density (dots per inch: Pillow's ``dpi`` of a JPEG, PNG, TIFF or BMP), as the upright
    pixels have it (a quarter turn swaps its axes); None when it records none (Pillow gives a TIFF without one 1 dpi)
    or a senseless one."""
    if im.format == "TIFF" and 282 not in getattr(im, "tag_v2", {}):
        return None
    try:
        x, y = (float(v) for v in im.info["dpi"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (0 < x < 1e6 and 0 < y < 1e6):
        return None
    return (y, x) if orientation in (5, 6, 7, 8) else (x, y)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_gray_alpha(px: np.ndarray) -> bytes:
    """A gray+alpha PNG (colour type 4) of 8 or 16 bits: neither OpenCV nor Pillow writes the 16-bit one."""
    h, w, _ = px.shape
    big = px.astype(">u2") if px.dtype == np.uint16 else px
    raw = b"".join(b"\x00" + big[y].tobytes() for y in range(h))
    head = struct.pack(">IIBBBBB", w, h, 16 if px.dtype == np.uint16 else 8, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", head) + png_chunk(b"IDAT", zlib.compress(raw, 1))
            + png_chunk(b"IEND", b""))


def png_with(data: bytes, meta: Metadata) -> bytes:
    """A PNG (OpenCV's, :func:`png_gray_alpha`'s) with ``meta``'s chunks placed after its header: its colour chunks,
    profile (iCCP), density (pHYs), EXIF (eXIf), XMP (iTXt, as Adobe's readers look for it) and text (tEXt, else
    iTXt)."""
    chunks, exif = b"".join(png_chunk(name, body) for name, body in meta.png_colour), meta.exif
    if meta.icc:
        chunks += png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(meta.icc))
    if meta.dpi:  # pixels per metre
        chunks += png_chunk(b"pHYs", struct.pack(">IIB", *(round(v / 0.0254) for v in meta.dpi), 1))
    if exif:
        chunks += png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    if meta.xmp:
        chunks += png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + meta.xmp)
    for key, value in meta.text:
        try:
            chunks += png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
        except UnicodeEncodeError:  # iTXt: UTF-8, uncompressed, no language
            chunks += png_chunk(b"iTXt", key.encode("utf-8") + b"\0\0\0\0\0" + value.encode("utf-8"))
    head = 8 + 25  # the signature and IHDR, always first
    return data[:head] + chunks + data[head:]


def deep_tiff(pixels: np.ndarray, meta: Metadata) -> bytes:
    """A 16-bit TIFF (gray, gray+alpha, RGB, RGBA; Deflate) with the colour profile, XMP, IPTC, density and the EXIF's
    first-directory text (camera, date, artist, copyright, description): tifffile writes no EXIF sub-directory, so
    the Exif and GPS directories of a 16-bit TIFF's EXIF are not carried (the XMP usually repeats them)."""
    import tifffile
    from PIL import Image

    tags = []
    if meta.exif:
        parsed = Image.Exif()
        parsed.load(meta.exif)
        tags = [(tag, "s", 0, value, True) for tag, value in sorted(parsed.items())
                if isinstance(value, str) and tag not in LAYOUT_TAGS and value.isascii()]
    if meta.xmp:
        tags.append((700, "B", len(meta.xmp), meta.xmp, True))
    if meta.iptc:
        tags.append((33723, 7, len(meta.iptc), meta.iptc, True))  # (UNDEFINED, as Pillow writes it)
    colour = pixels.ndim == 3 and pixels.shape[2] >= 3
    alpha = pixels.ndim == 3 and pixels.shape[2] in (2, 4)
    buf = io.BytesIO()
    tifffile.imwrite(buf, pixels, photometric="rgb" if colour else "minisblack", planarconfig="contig",
                     extrasamples=("unassalpha",) if alpha else None, compression="zlib", predictor=True,
                     compressionargs={"level": 1}, iccprofile=meta.icc,
                     resolution=meta.dpi, resolutionunit="inch" if meta.dpi else None, metadata=None, software=False,
                     extratags=tags)
    return buf.getvalue()
