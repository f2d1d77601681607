"""What a photo carries besides its pixels survives restoration in every format and depth mgfr writes: the colour
profile, EXIF, XMP, the pixel density, text, IPTC, a gray+alpha photo's alpha; TIFFs Pillow cannot decode are read;
metadata never makes an output slower to write or larger."""

import json
import re

import numpy as np
import pytest
from PIL import Image, ImageCms

from mgfr_cli.faces.io import photo_of, read_image, write_image
from mgfr_cli.faces.metadata import Metadata, appended_parts, upright_xmp

COMMON = ("--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu")
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/></rdf:RDF></x:xmpmeta>')
PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # (its header holds the time made)


def _exif(dpi: float | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x8298] = "Nikon", "(c) Grandma"
    if dpi:
        exif[0x011A], exif[0x011B], exif[0x0128] = dpi, dpi, 2
    exif.get_ifd(0x8769)[0x9003] = "1987:06:05 04:03:02"
    return exif.tobytes()


@pytest.mark.parametrize("name, shape, dtype", [
    ("deep.png", (6, 8, 3), np.uint16), ("deep_alpha.png", (6, 8, 4), np.uint16), ("deep_gray.png", (6, 8), np.uint16),
    ("deep.tif", (6, 8, 3), np.uint16), ("deep_alpha.tif", (6, 8, 4), np.uint16), ("deep_gray.tif", (6, 8), np.uint16),
    ("plain.tif", (6, 8, 3), np.uint8), ("plain_alpha.tif", (6, 8, 4), np.uint8),
])
def test_every_depth_and_format_keeps_profile_exif_xmp_and_density(tmp_path, name, shape, dtype):
    """16-bit PNGs and TIFFs (a photographer's ProPhoto exports, a scanner's 48-bit scans) were written without
    their colour profile (every colour shown as sRGB: wrong), EXIF, XMP and density; 8-bit TIFFs without EXIF and
    XMP. Each is written back now, the pixels exact."""
    pixels = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    gray = len(shape) == 2
    icc = None if gray else PROFILE
    write_image(tmp_path / name, pixels, meta=Metadata(icc, _exif(300.0), XMP, (600.0, 600.0)))
    back = read_image(tmp_path / name)
    assert back.pixels.dtype == dtype and np.array_equal(back.pixels, pixels)
    assert back.meta.icc == icc and back.meta.xmp == XMP
    assert back.meta.dpi == pytest.approx((600.0, 600.0), rel=1e-5)
    kept = Image.open(tmp_path / name).getexif()
    assert (kept[0x010F], kept[0x8298]) == ("Nikon", "(c) Grandma")
    assert float(kept[0x011A]) == pytest.approx(600.0)  # the EXIF's density is the written one
    if not (dtype == np.uint16 and name.endswith(".tif")):  # (tifffile writes no EXIF sub-directory)
        assert kept.get_ifd(0x8769)[0x9003] == "1987:06:05 04:03:02"


@pytest.mark.parametrize("name, dtype, alpha_as", [
    ("ga.tif", np.uint8, "gray+alpha"), ("ga.webp", np.uint8, "rgba"), ("ga16.tif", np.uint16, "gray+alpha"),
    ("ga16.png", np.uint16, "gray+alpha"), ("ga.png", np.uint8, "gray+alpha"),
])
def test_a_gray_photos_alpha_is_kept_in_every_format_that_holds_alpha(tmp_path, name, dtype, alpha_as):
    """A gray+alpha photo written as TIFF (its own format, under --ext auto) or WebP lost its alpha without a word
    (both hold alpha: the summary said nothing was lost); now kept, as gray+alpha where the format holds it (a 16-bit
    one, which Pillow cannot read, is read with tifffile), else as RGBA of the gray. Its PNG keeps its metadata now
    too."""
    top = np.iinfo(dtype).max
    gray = np.random.default_rng(1).integers(0, top, (6, 8), dtype=dtype)
    alpha = np.tile(np.linspace(0, top, 8).astype(dtype), (6, 1))
    write_image(tmp_path / name, np.dstack([gray, alpha]), meta=Metadata(None, _exif(), XMP, (300.0, 300.0)))
    back = read_image(tmp_path / name)
    assert back.has_alpha and back.gray_alpha == (alpha_as == "gray+alpha")
    lossy = name.endswith(".webp")
    assert np.abs(back.pixels[..., 3].astype(int) - alpha).max() <= (2 if lossy else 0)
    seen = alpha > 0  # (WebP drops what is under fully transparent pixels)
    assert np.abs(back.pixels[..., 0].astype(int) - gray)[seen].max() <= (8 if lossy else 0)
    exif = Image.Exif()
    exif.load(back.meta.exif)
    assert back.meta.xmp == XMP and exif[0x010F] == "Nikon"


def test_a_scan_keeps_its_profile_depth_alpha_and_prints_at_its_size(tiny_root, tmp_path, cli):
    """`mgfr restore` of a 16-bit scan at 300 dpi with --upscale 2: a 16-bit TIFF with its profile, EXIF text and
    XMP, at 600 dpi (the same print size); a gray+alpha TIFF keeps its alpha under --ext auto, the summary saying
    nothing lost; the Python API's PIL result carries the scaled density in its info."""
    from mgfr_cli.api import Restorer

    y, x = np.mgrid[0:40, 0:60]
    scan = np.dstack([x * 1000, y * 1500, np.full_like(x, 30000)]).astype(np.uint16)  # faceless: written as it is
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "scan.tif", scan, meta=Metadata(PROFILE, _exif(300.0), XMP, (300.0, 300.0)))
    Image.fromarray(np.dstack([(x * 4).astype(np.uint8), (y * 6).astype(np.uint8)]), "LA").save(
        tmp_path / "in" / "cutout.tif", dpi=(150, 150))
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--upscale", "2", "--bg-upsampler", "none",
                         "--model-root", tiny_root, *COMMON)
    assert code == 0, out + err
    written = read_image(tmp_path / "out" / "scan.tif")
    assert written.pixels.dtype == np.uint16 and written.pixels.shape == (80, 120, 3)
    assert written.meta.icc == PROFILE and written.meta.xmp == XMP and written.meta.dpi == pytest.approx((600.0, 600.0))
    assert Image.open(tmp_path / "out" / "scan.tif").getexif()[0x8298] == "(c) Grandma"
    cutout = read_image(tmp_path / "out" / "cutout.tif")
    assert cutout.gray_alpha and cutout.meta.dpi == pytest.approx((300.0, 300.0))
    assert np.abs(cutout.pixels[..., 3].astype(int) - np.kron(y * 6, np.ones((2, 2), int))).max() <= 6
    rows = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())
    assert len(rows) == 2 and "cannot hold" not in out + err, out + err
    restorer = Restorer.load(tiny_root, detector="retinaface_mobile0.25", device="cpu", bg_upsampler="none",
                             offline=True)
    result = restorer.restore(Image.open(tmp_path / "in" / "cutout.tif"), upscale=2, steps=1)
    assert result.image.size == (120, 80) and result.image.info["dpi"] == pytest.approx((300.0, 300.0))


def test_a_sideways_photos_density_is_turned_with_it(tmp_path):
    """A photo stored sideways (EXIF orientation 6) at 300x200 dpi is 200x300 dpi once turned upright; a TIFF that
    records no density has none (Pillow reports 1 dpi for it: its output would have claimed 1 dpi)."""
    import cv2

    cv2.imwrite(str(tmp_path / "none.tif"), np.zeros((4, 6, 3), np.uint8))
    assert read_image(tmp_path / "none.tif").meta.dpi is None
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "s.jpg", exif=exif.tobytes(), dpi=(300, 200))
    photo = read_image(tmp_path / "s.jpg")
    assert photo.pixels.shape[:2] == (6, 4) and photo.meta.dpi == (200.0, 300.0)


def test_a_pngs_text_and_a_jpegs_comment_are_written_back(tiny_root, tmp_path, cli):
    """A PNG's text (a title, an author, a Stable Diffusion tool's `parameters` with the prompt that made it) and a
    JPEG's comment were dropped from the restored copy; kept now (8- and 16-bit PNG, JPEG; a PNG's `Comment` becomes
    the comment of its `--ext jpg` copy). ImageMagick's raw EXIF copy, which holds the old orientation, is not."""
    from PIL import PngImagePlugin

    from mgfr_cli.api import Restorer

    y, x = np.mgrid[0:40, 0:60]
    flat = np.dstack([x * 4, y * 6, np.full_like(x, 90)]).astype(np.uint8)  # faceless: written as it is
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "portrait of grandma, Steps: 20, Sampler: Euler a")
    info.add_text("Comment", "Oma Lüdenscheid 1962 ✓")  # not Latin-1: an iTXt chunk
    info.add_text("Description", "d" * 3000, zip=True)
    info.add_text("Raw profile type exif", "\nexif\n      8\n4578696600004d4d\n")
    (tmp_path / "in").mkdir()
    Image.fromarray(flat).save(tmp_path / "in" / "gen.png", pnginfo=info)
    Image.fromarray(flat).save(tmp_path / "in" / "shot.jpg", comment="scanned by Uncle Bob", quality=95)
    deep = np.zeros((40, 60, 3), np.uint16) + 20000  # a 16-bit PNG: its chunks are written by mgfr, not Pillow
    write_image(tmp_path / "in" / "deep.png", deep, meta=Metadata(text=(("Title", "Hochzeit"), ("Author", "Pawe\u0142"))))
    common = ("--model-root", tiny_root, *COMMON)
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", *common)
    assert code == 0, out + err
    kept = Image.open(tmp_path / "out" / "gen.png").text
    assert kept["parameters"] == "portrait of grandma, Steps: 20, Sampler: Euler a"
    assert kept["Comment"] == "Oma Lüdenscheid 1962 ✓" and kept["Description"] == "d" * 3000
    assert not any(k.startswith("Raw profile") for k in kept), kept
    assert Image.open(tmp_path / "out" / "shot.jpg").info["comment"] == b"scanned by Uncle Bob"
    deep_kept = Image.open(tmp_path / "out" / "deep.png")
    assert read_image(tmp_path / "out" / "deep.png").pixels.dtype == np.uint16
    assert deep_kept.text == {"Title": "Hochzeit", "Author": "Pawe\u0142"}
    code, out, err = cli("restore", tmp_path / "in" / "gen.png", "-o", tmp_path / "jpg", "--ext", "jpg", *common)
    assert code == 0 and Image.open(tmp_path / "jpg" / "gen.jpg").info["comment"] == "Oma Lüdenscheid 1962 ✓".encode()
    restorer = Restorer.load(tiny_root, detector="retinaface_mobile0.25", device="cpu", offline=True)
    result = restorer.restore(Image.open(tmp_path / "in" / "gen.png"), steps=1)
    assert result.image.info["parameters"].startswith("portrait of grandma")


def test_the_iptc_block_of_a_jpeg_or_tiff_is_written_back(tmp_path):
    """The IPTC-IIM block (captions, keywords, credits of older captioning tools) of a JPEG (Photoshop's APP13
    resource, after another resource) or a TIFF (tag 33723) was dropped; written back into JPEG and 8/16-bit TIFF."""
    import io
    import struct

    from PIL import IptcImagePlugin

    def dataset(record, number, value):
        return b"\x1c" + bytes([record, number]) + struct.pack(">H", len(value)) + value

    iim = dataset(2, 0, b"\x00\x04") + dataset(2, 120, b"Grandma at the lake") + dataset(2, 25, b"family")
    other = b"8BIM\x04\x0c\x03abc" + struct.pack(">I", 3) + b"xyz\0"  # a named, odd-sized resource first
    body = b"Photoshop 3.0\0" + other + b"8BIM\x04\x04\0\0" + struct.pack(">I", len(iim)) + iim + b"\0" * (len(iim) & 1)
    buf = io.BytesIO()  # (Pillow writes `extra` as given: the APP13 segment)
    segment = b"\xff\xed" + struct.pack(">H", 2 + len(body)) + body
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, "JPEG", extra=segment)
    (tmp_path / "in.jpg").write_bytes(buf.getvalue())
    photo = read_image(tmp_path / "in.jpg")
    assert photo.meta.iptc == iim
    deep = photo.pixels.astype(np.uint16) * 257
    for name, pixels in (("o.jpg", photo.pixels), ("o.tif", photo.pixels), ("o16.tif", deep)):
        write_image(tmp_path / name, pixels, meta=photo.meta)
        got = IptcImagePlugin.getiptcinfo(Image.open(tmp_path / name))
        assert got and got[(2, 120)] == b"Grandma at the lake" and got[(2, 25)] == b"family", name
        assert read_image(tmp_path / name).meta.iptc == iim, name


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # (Pillow's, on the junk file)
def test_tiffs_pillow_cannot_decode_are_read_with_tifffile(tmp_path, caplog):
    """A retoucher's 16-bit RGBA TIFF with a spot channel beside it, a float RGB TIFF and a premultiplied one were
    "not a readable image"; read now (alpha made straight, the extra channel said dropped, turned upright by its
    orientation, its profile and density kept), and over --max-megapixels refused before decoding."""
    import tifffile

    from mgfr_cli.errors import InputError

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 65535, (6, 8, 3), dtype=np.uint16)
    alpha = np.tile(np.linspace(1000, 65535, 8).astype(np.uint16), (6, 1))
    spot = rng.integers(0, 65535, (6, 8), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "spot.tif", np.dstack([rgb, alpha, spot]), photometric="rgb",
                     extrasamples=("unassalpha", "unspecified"), iccprofile=PROFILE, resolution=(300, 300),
                     resolutionunit="inch", extratags=[(274, "H", 1, 6, True)])  # stored sideways
    photo = read_image(tmp_path / "spot.tif")
    upright = np.rot90(np.dstack([rgb, alpha]), 3)  # orientation 6: a quarter turn clockwise
    assert photo.pixels.dtype == np.uint16 and np.array_equal(photo.pixels, upright)
    assert "1 extra channel(s) not kept" in photo.note and photo.meta.icc == PROFILE
    assert photo.meta.dpi == pytest.approx((300.0, 300.0))
    premultiplied = (rgb.astype(np.float64) * alpha[..., None] / 65535).round().astype(np.uint16)
    tifffile.imwrite(tmp_path / "pre.tif", np.dstack([premultiplied, alpha, spot]), photometric="rgb",
                     extrasamples=("assocalpha", "unspecified"))
    straight = read_image(tmp_path / "pre.tif").pixels
    assert np.abs(straight[..., :3].astype(int) - rgb).max() <= 66000 / 1000  # (rounding at the lowest alpha)
    floats = rng.random((6, 8, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "float.tif", floats, photometric="rgb")
    assert np.abs(read_image(tmp_path / "float.tif").pixels.astype(int) - np.rint(floats * 255)).max() <= 1
    with pytest.raises(InputError, match="over the limit of 1e-05"):
        read_image(tmp_path / "spot.tif", max_megapixels=0.00001)
    tifffile.imwrite(tmp_path / "wide.tif", np.zeros((4, 4, 9), np.float32), photometric="rgb", planarconfig="contig",
                     extrasamples=("unspecified",) * 6)  # 36 bytes a pixel: refused before it is decoded
    with pytest.raises(InputError, match="9 samples of 32 bits a pixel"):
        read_image(tmp_path / "wide.tif")
    (tmp_path / "junk.tif").write_bytes(b"II*\0" + b"\xff" * 64)
    with pytest.raises(InputError, match="junk.tif: not a readable image; nor by tifffile"):
        read_image(tmp_path / "junk.tif")
    (tmp_path / "header.tif").write_bytes(b"II*\0\x08\0\0\0")  # a header and nothing else (a copy cut short)
    with pytest.raises(InputError, match=r"header.tif: not a readable image; nor by tifffile \(no image it can decode\)$"):
        read_image(tmp_path / "header.tif")
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]  # its own warnings not printed besides


def test_a_pngs_metadata_does_not_change_how_its_pixels_are_encoded(tmp_path):
    """A PNG with metadata went through Pillow's encoder at its default level, 8x slower than OpenCV's (6.1 s against
    0.75 s for a 12 MP photo here), and most photos carry a density: every PNG's pixels are encoded alike now, the
    metadata's chunks beside them."""
    import zlib

    def idat(path):
        data, at, out = path.read_bytes(), 8, b""
        while at < len(data):
            n = int.from_bytes(data[at:at + 4], "big")
            out += data[at + 8:at + 8 + n] if data[at + 4:at + 8] == b"IDAT" else b""
            at += 12 + n
        return out

    y, x = np.mgrid[0:64, 0:96]
    pixels = np.dstack([x * 2, y * 3, (x + y) % 256]).astype(np.uint8)
    write_image(tmp_path / "plain.png", pixels)
    write_image(tmp_path / "tagged.png", pixels, meta=Metadata(PROFILE, _exif(), XMP, (300.0, 300.0), (("a", "b"),)))
    assert idat(tmp_path / "tagged.png") == idat(tmp_path / "plain.png")
    assert len(zlib.decompress(idat(tmp_path / "tagged.png"))) == 64 * (96 * 3 + 1)  # (the rows, each filtered)


def test_a_tiff_with_metadata_is_compressed_as_one_without(tmp_path):
    """An 8-bit TIFF with metadata went out raw (2.4x the size of OpenCV's LZW); it is LZW with differencing now, as
    a 16-bit one is Deflate with differencing, but where its EXIF has Exif or GPS directories (only Pillow's raw
    writer keeps them whole)."""
    import cv2

    y, x = np.mgrid[0:120, 0:160]
    pixels = np.dstack([x, y * 2, (x + y) % 256]).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "cv.tif"), pixels[..., ::-1])
    write_image(tmp_path / "dpi.tif", pixels, meta=Metadata(PROFILE, dpi=(300.0, 300.0), iptc=b"\x1c\x02x\0\x01a"))
    write_image(tmp_path / "deep.tif", pixels.astype(np.uint16) * 257, meta=Metadata(dpi=(300.0, 300.0)))
    write_image(tmp_path / "camera.tif", pixels, meta=Metadata(exif=_exif()))
    tags = {name: Image.open(tmp_path / name).tag_v2 for name in ("dpi.tif", "deep.tif", "camera.tif")}
    assert (tags["dpi.tif"][259], tags["dpi.tif"][317]) == (5, 2) and tags["deep.tif"][317] == 2
    assert (tmp_path / "dpi.tif").stat().st_size < 1.2 * (tmp_path / "cv.tif").stat().st_size
    assert tags["camera.tif"][259] == 1 and Image.open(tmp_path / "camera.tif").getexif().get_ifd(0x8769)
    for name in ("dpi.tif", "deep.tif", "camera.tif"):
        back = read_image(tmp_path / name).pixels
        assert np.array_equal(back, pixels if back.dtype == np.uint8 else pixels.astype(np.uint16) * 257), name


def test_a_channel_pillow_leaves_out_of_a_tiff_is_said(tmp_path):
    """An 8-bit RGBA TIFF with a spot channel beside it is read by Pillow, which drops the spot channel without a
    word; the summary says so now, as for the TIFFs tifffile reads."""
    import tifffile

    rgba = np.random.default_rng(4).integers(0, 255, (6, 8, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "spot8.tif", np.dstack([rgba, rgba[..., 0]]), photometric="rgb",
                     extrasamples=("unassalpha", "unspecified"))
    photo = read_image(tmp_path / "spot8.tif")
    assert np.array_equal(photo.pixels, rgba) and photo.note == "1 extra channel(s) not kept (only colour and alpha are)"
    tifffile.imwrite(tmp_path / "plain.tif", rgba, photometric="rgb", extrasamples=("unassalpha",))
    assert read_image(tmp_path / "plain.tif").note == ""


def test_a_pngs_gamma_and_chromaticities_are_written_back(tmp_path):
    """A PNG's gAMA and cHRM (an old Mac's 1.8-gamma PNG; browsers show it by them) and sRGB chunks were dropped, so
    its restored copy showed lighter or darker; they are written back into its PNG output."""
    import struct
    import zlib

    import cv2

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = np.random.default_rng(5).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    plain = cv2.imencode(".png", pixels[..., ::-1])[1].tobytes()
    mac = chunk(b"gAMA", struct.pack(">I", 55556)) + chunk(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000,
                                                                                 30000, 60000, 15000, 6000))
    for name, chunks, info in (("mac.png", mac, {"gamma": 0.55556}), ("srgb.png", chunk(b"sRGB", b"\1"), {"srgb": 1})):
        (tmp_path / name).write_bytes(plain[:33] + chunks + plain[33:])
        photo = read_image(tmp_path / name)
        write_image(tmp_path / f"out_{name}", photo.pixels, meta=photo.meta)
        written = Image.open(tmp_path / f"out_{name}").info
        assert {k: written.get(k) for k in info} == info, written
    assert Image.open(tmp_path / "out_mac.png").info["chromaticity"] == (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)


def test_what_describes_the_inputs_bytes_is_not_carried(tmp_path):
    """A Photoshop TIFF's first directory (its EXIF) held its layers, its resources (a thumbnail of the unrestored
    photo) and a CMYK profile: all were written into the restored copy, so Photoshop opened the old layers instead
    of the restored pixels and the RGB output of a CMYK TIFF carried the CMYK profile. A phone's XMP claimed a
    motion photo's clip and an Ultra HDR gain map appended to the input (not to the output) and held a thumbnail;
    its pixel size and density were the input's. None of it is carried now (the clip and gain map said not kept);
    the rest of the metadata is."""
    import tifffile
    from PIL import TiffImagePlugin

    cmyk_profile = bytearray(PROFILE)
    cmyk_profile[16:20] = b"CMYK"
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[271], tags[34377], tags[37724] = "Canon", b"8BIM\x04\x0c" + bytes(64), b"Adobe Photoshop Document Data Block"
    tags.tagtype[34377], tags.tagtype[37724] = 1, 7
    pixels = np.random.default_rng(0).integers(0, 255, (30, 40, 4), dtype=np.uint8)
    Image.fromarray(pixels, "CMYK").save(tmp_path / "layered.tif", tiffinfo=tags, icc_profile=bytes(cmyk_profile))
    photo = read_image(tmp_path / "layered.tif")
    for name in ("out.tif", "out.jpg", "out.png"):
        write_image(tmp_path / name, photo.pixels, meta=photo.meta)
        written = Image.open(tmp_path / name)
        kept = set(written.getexif())
        assert 271 in kept and not kept & {34377, 37724, 34675}, (name, sorted(kept))
        assert not written.info.get("icc_profile"), name

    phone = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             b'<rdf:Description xmlns:GCamera="http://ns.google.com/photos/1.0/camera/" xmlns:tiff='
             b'"http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:xmp="http://ns.adobe.'
             b'com/xap/1.0/" xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" GCamera:MotionPhoto="1" '
             b'GCamera:MotionPhotoVersion="1" hdrgm:Version="1.0" tiff:Orientation="6" exif:PixelXDimension="40" '
             b'xmp:Rating="5"><tiff:ImageLength>30</tiff:ImageLength><tiff:XResolution>72/1</tiff:XResolution>'
             b'<Container:Directory><rdf:Seq><rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="video/mp4" '
             b'Item:Semantic="MotionPhoto" Item:Length="2374568"/></rdf:li></rdf:Seq></Container:Directory>'
             b'<xmp:Thumbnails><rdf:Alt><rdf:li>/9j/4AAQSkZJRg</rdf:li></rdf:Alt></xmp:Thumbnails>'
             b'</rdf:Description></rdf:RDF></x:xmpmeta>')
    rgb = np.ascontiguousarray(pixels[:, :, :3])
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", xmp=phone, dpi=(72, 72))
    photo = read_image(tmp_path / "phone.jpg")
    assert photo.note == "its motion photo's clip not kept; its HDR gain map (shown as SDR) not kept"  # (summary)
    double = np.repeat(np.repeat(photo.pixels, 2, 0), 2, 1)
    assert double.shape[:2] == (80, 60)  # turned upright by the XMP's orientation (Pillow reads it as the EXIF's)
    for name in ("phone_out.jpg", "phone_out.png", "phone_out.tif"):
        write_image(tmp_path / name, double, meta=photo.meta.scaled(2))
        xmp = read_image(tmp_path / name).meta.xmp
        for stale in (b"GCamera:MotionPhoto", b"hdrgm:Version", b"Container:", b"Thumbnails", b"/9j/"):
            assert stale not in xmp, (name, stale)
        assert b'xmp:Rating="5"' in xmp and b'tiff:Orientation="1"' in xmp, name
        assert b'exif:PixelXDimension="60"' in xmp and b"<tiff:ImageLength>80</tiff:ImageLength>" in xmp, name
        assert b"<tiff:XResolution>144/1</tiff:XResolution>" in xmp, name
    info = photo.meta.scaled(2).pil_info(double)  # the Python API's PIL result: the same
    assert b'exif:PixelXDimension="60"' in info["xmp"] and b"Container:" not in info["xmp"]

    iphone = phone.replace(b'hdrgm:Version="1.0"', b'HDRGainMap:HDRGainMapVersion="131072"')  # a HEIC's aux image
    assert appended_parts({"xmp": iphone}) == ["its motion photo's clip not kept", "its HDR gain map (shown as SDR) not kept"]
    assert b"HDRGainMap" not in upright_xmp(iphone)
    portrait = {"depth_images": [object()], "aux": {"urn:com:apple:photo:2020:aux:hdrgainmap": [52]}}  # pillow-heif's
    assert appended_parts(portrait) == ["its HDR gain map (shown as SDR) not kept",
                                              "its depth map (a portrait's) not kept"]
    heic = Image.new("RGB", (8, 6))
    heic.info.update(portrait)  # as pillow-heif opens an iPhone portrait: the note made where every photo is read
    assert photo_of(heic).note == "its HDR gain map (shown as SDR) not kept; its depth map (a portrait's) not kept"

    sideways = np.random.default_rng(1).random((6, 8, 3), dtype=np.float32)  # read by tifffile, not Pillow
    tifffile.imwrite(tmp_path / "float.tif", sideways, photometric="rgb", extratags=[
        (274, "H", 1, 6, True), (700, "B", len(phone), phone, True)])
    assert b'tiff:Orientation="1"' in read_image(tmp_path / "float.tif").meta.xmp


def test_a_cmyk_photo_is_shown_as_its_profile_says(tmp_path):
    """A CMYK JPEG (a press photo, a print shop's scan) came out in Pillow's formula's colours, which ignore what its
    inks look like (full cyan became (0, 255, 255), a colour no ink prints); its CMYK profile now converts it, as
    Photoshop and browsers show it (checked against skimage's Lab -> sRGB of the profile's cyan). A damaged profile
    falls back to the formula rather than failing the photo."""
    from skimage.color import lab2rgb

    from helpers import cmyk_profile

    cyan = (55.0, -37.0, -50.0)
    pixels = np.zeros((8, 16, 4), np.uint8)
    pixels[:, 8:, 0] = 255  # left: bare paper; right: full cyan
    Image.fromarray(pixels, "CMYK").save(tmp_path / "press.jpg", icc_profile=cmyk_profile(cyan), quality=100)
    rgb = read_image(tmp_path / "press.jpg").pixels.astype(int)
    expected = np.round(lab2rgb(np.array([[cyan]])) * 255).astype(int)[0, 0]  # (D65 white: adapted as littleCMS does)
    assert np.abs(rgb[:, 12] - expected).max() <= 3, (rgb[4, 12], expected)
    assert np.abs(rgb[:, 2] - 255).max() <= 2  # paper is white
    broken = cmyk_profile(cyan)[:400]  # cut short in its colour table
    Image.fromarray(pixels, "CMYK").save(tmp_path / "broken.jpg", icc_profile=broken, quality=100)
    assert np.abs(read_image(tmp_path / "broken.jpg").pixels[4, 12].astype(int) - (0, 255, 255)).max() <= 3


def test_a_damaged_exif_is_said_in_the_summary_not_in_pillows_words(tmp_path):
    """A JPEG whose EXIF runs past its end printed Pillow's 'UserWarning: Truncated File Read' (two lines naming a
    Pillow source file, not the photo) into the run's output. It is the photo's note now; what parses is kept."""
    import struct
    import warnings

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D Mark IV with a long model name"
    raw = bytearray(exif.tobytes())
    at = raw.find(struct.pack(">H", 0x0110))
    raw[at + 4:at + 8] = struct.pack(">I", 5000)  # the model's length: past the end of the block
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "damaged.jpg", exif=bytes(raw))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        photo = read_image(tmp_path / "damaged.jpg")
    assert not shown, [str(w.message) for w in shown]
    assert photo.note == "its metadata is damaged (kept as far as it reads)"
    kept = Image.Exif()
    kept.load(photo.meta.exif)
    assert kept[0x010F] == "Canon"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "sound.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "sound.jpg").note == ""
    import tifffile  # a tag with one value too many (Pillow: 'Metadata Warning'): read, neither printed nor "damaged"

    tifffile.imwrite(tmp_path / "odd.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb",
                     extratags=[(274, "H", 2, (1, 1), True)])  # orientation, twice
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        photo = read_image(tmp_path / "odd.tif")
    assert not shown and photo.note == "", ([str(w.message) for w in shown], photo.note)


def test_a_restored_file_is_a_new_instance_of_the_photos_document(tmp_path):
    """The photo's XMP was copied with its ``xmpMM:InstanceID``, so a catalogue (Lightroom, a DAM) took the restored
    file for the photo's own file. The output gets an instance ID of its own, the same for the same pixels (a rerun
    writes the same bytes), in attribute and element form; the document ID and the history are kept."""
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" xmpMM:DocumentID="xmp.did:d1" '
           b'xmpMM:InstanceID="xmp.iid:photo"><xmpMM:History><rdf:Seq><rdf:li stEvt:instanceID="xmp.iid:photo"/>'
           b'</rdf:Seq></xmpMM:History></rdf:Description></rdf:RDF></x:xmpmeta>')
    pixels = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    for name in ("a.jpg", "a.png", "a.tif", "b.jpg"):
        write_image(tmp_path / name, pixels if name != "b.jpg" else 255 - pixels, meta=Metadata(xmp=xmp))
    ids = {}
    for name in ("a.jpg", "a.png", "a.tif", "b.jpg"):
        written = read_image(tmp_path / name).meta.xmp
        ids[name] = re.search(rb'xmpMM:InstanceID="([^"]*)"', written)[1]
        assert b'xmpMM:DocumentID="xmp.did:d1"' in written and b'stEvt:instanceID="xmp.iid:photo"' in written
    assert ids["a.jpg"] == ids["a.png"] == ids["a.tif"] != b"xmp.iid:photo" and ids["b.jpg"] != ids["a.jpg"]
    element = Metadata(xmp=b"<x><xmpMM:InstanceID>uuid:photo</xmpMM:InstanceID></x>").for_file(".png", pixels).xmp
    assert element == b"<x><xmpMM:InstanceID>" + ids["a.jpg"] + b"</xmpMM:InstanceID></x>"
