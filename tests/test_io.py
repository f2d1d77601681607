import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mgfr_cli.errors import InputError
from mgfr_cli.faces.io import Photo, output_format, photo_of, read_image, write_image
from mgfr_cli.faces.metadata import Metadata


def _save(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_gray_rgba_and_16bit_roundtrip(tmp_path):
    gray = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    assert read_image(_save(tmp_path / "g.png", gray)).pixels.ndim == 2
    rgba = np.random.default_rng(1).integers(0, 255, (20, 30, 4), dtype=np.uint8)
    p = read_image(_save(tmp_path / "a.png", rgba))
    assert p.has_alpha and np.array_equal(p.pixels, rgba)
    deep = np.random.default_rng(2).integers(0, 65535, (20, 30, 3), dtype=np.uint16)
    write_image(tmp_path / "d.png", deep)
    back = read_image(tmp_path / "d.png")
    assert back.pixels.dtype == np.uint16 and np.array_equal(back.pixels, deep)
    gray16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    write_image(tmp_path / "g16.png", gray16)
    assert np.array_equal(read_image(tmp_path / "g16.png").pixels, gray16)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # white on the left
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    p = read_image(tmp_path / "r.jpg")
    assert p.pixels.shape[:2] == (20, 10)
    assert p.pixels[:5].mean() > 200 and p.pixels[-5:].mean() < 50  # the left edge is now on top


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"this is text, not a photo", "not a readable image"),
])
def test_bad_files(tmp_path, content, message):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_image(tmp_path / "x.jpg")


def test_truncated_jpeg_and_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for ext in ("jpg", "png"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG" if ext == "jpg" else "PNG")
        (tmp_path / f"t.{ext}").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        with pytest.raises(InputError, match="truncated or corrupt|not a readable"):
            read_image(tmp_path / f"t.{ext}")


def test_size_limit(tmp_path):
    _save(tmp_path / "big.png", np.zeros((2000, 1000), np.uint8))
    with pytest.raises(InputError, match="over the limit of 1"):
        read_image(tmp_path / "big.png", max_megapixels=1)


def test_cmyk_and_palette(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").pixels.shape == (8, 8, 3)
    Image.new("P", (8, 8), 3).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").pixels.shape == (8, 8, 3)


def test_output_format_never_drops_alpha(tmp_path):
    rgba = Photo(np.zeros((4, 4, 4), np.uint8))
    assert output_format(rgba, "auto", tmp_path / "x.jpg") == "png"
    assert output_format(Photo(np.zeros((4, 4, 3), np.uint8)), "auto", tmp_path / "x.jpeg") == "jpg"


def test_atomic_write_leaves_no_temporary(tmp_path):
    write_image(tmp_path / "o.png", np.zeros((4, 4, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_an_ext_that_cannot_hold_a_photo_says_what_it_dropped(tiny_root, astronaut, tmp_path, cli):
    """`--ext jpg` on a photo with alpha or 16 bits: written as asked, without them, and said once naming each
    photo and what it lost (it was silent); `--ext png` keeps them and says nothing."""
    face = np.ascontiguousarray(astronaut[:256, 100:356])
    (tmp_path / "in").mkdir()
    rgba = _save(tmp_path / "in" / "rgba.png", np.dstack([face, np.full(face.shape[:2], 200, np.uint8)]))
    deep = tmp_path / "in" / "deep.png"
    write_image(deep, face.astype(np.uint16) * 257)
    plain = _save(tmp_path / "in" / "plain.png", face)
    common = ("--model-root", tiny_root, "--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu")
    code, out, err = cli("restore", rgba, deep, plain, "-o", tmp_path / "jpg", "--ext", "jpg", *common)
    said = " ".join(err.split())
    assert code == 0 and said.count("--ext jpg: written without") == 1, out + err
    note = said[said.index("--ext jpg: written without"):]
    assert "rgba.png (alpha), deep.png (16 bits) (--ext auto" in note and "plain.png" not in note
    assert read_image(tmp_path / "jpg" / "rgba.jpg").pixels.shape[2] == 3
    code, out, err = cli("restore", rgba, deep, "-o", tmp_path / "png", "--ext", "png", *common)
    assert code == 0 and "written without" not in err, out + err


def test_a_photos_exif_and_xmp_are_written_back_upright(tiny_root, tmp_path, cli):
    """The date, camera and place of a photo (EXIF), its rating, keywords and people (XMP) were dropped from its
    restored copy (a photo library then files it under today). They are written back: orientation 1 (the pixels
    are turned upright), the pixel dimensions of the output (--upscale), nothing of a TIFF's own layout."""
    y, x = np.mgrid[0:60, 0:80]
    sideways = np.dstack([x * 3, y * 4, np.full_like(x, 90)]).astype(np.uint8)  # faceless: written as it is
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0132] = 6, "Canon", "2001:02:03 04:05:06"
    exif.get_ifd(0x8769).update({0x9003: "2001:02:03 04:05:06", 0xA002: 80, 0xA003: 60})
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)
    (tmp_path / "in").mkdir()
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
           b'tiff:Orientation="6" xmp:Rating="5"/></rdf:RDF></x:xmpmeta>')
    Image.fromarray(sideways).save(tmp_path / "in" / "photo.jpg", exif=exif.tobytes(), xmp=xmp, quality=95)
    Image.fromarray(sideways).save(tmp_path / "in" / "scan.tif", exif=exif.tobytes())
    common = ("--model-root", tiny_root, "--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu")
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--upscale", "2", "--bg-upsampler",
                         "none", "--ext", "png", *common)
    assert code == 0, out + err
    for name in ("photo.png", "scan.png"):
        written = Image.open(tmp_path / "out" / name)
        kept = written.getexif()
        assert written.size == (120, 160) and kept[0x0112] == 1, name  # upright: 60x80 turned, times 2
        assert (kept[0x010F], kept[0x0132]) == ("Canon", "2001:02:03 04:05:06"), name
        assert kept.get_ifd(0x8825)[2] == (48.0, 51.0, 29.0) and kept.get_ifd(0x8769)[0x9003] == "2001:02:03 04:05:06"
        assert not {256, 257, 273, 279} & set(kept), (name, dict(kept))
    assert (kept.get_ifd(0x8769)[0xA002], kept.get_ifd(0x8769)[0xA003]) == (120, 160)
    code, out, err = cli("restore", tmp_path / "in" / "photo.jpg", "-o", tmp_path / "jpg", *common)
    assert code == 0 and Image.open(tmp_path / "jpg" / "photo.jpg").getexif()[0x0132] == "2001:02:03 04:05:06"
    for written in (tmp_path / "out" / "photo.png", tmp_path / "jpg" / "photo.jpg"):
        packet = Image.open(written).info.get("xmp")
        packet = packet.encode() if isinstance(packet, str) else packet
        assert packet == xmp.replace(b'Orientation="6"', b'Orientation="1"'), (written, packet)


def test_an_iphone_heic_photo_is_read_upright_and_restored(tiny_root, astronaut, tmp_path, cli):
    """HEIC (what iPhones take) was skipped as "not an image format mgfr reads": it is read with pillow-heif,
    upright (turned once, by its orientation), its face restored, written as PNG (--ext auto: a format mgfr does not
    write) with its EXIF; a folder takes it as any photo."""
    import pillow_heif  # written with its own API: Pillow is not taught HEIC here, mgfr must do it

    stored = np.ascontiguousarray(np.rot90(astronaut[:400], 1))  # stored sideways; orientation 6 turns it upright
    exif = Image.Exif()
    exif[0x0112], exif[0x0132] = 6, "2024:05:06 07:08:09"
    (tmp_path / "in").mkdir()
    pillow_heif.from_pillow(Image.fromarray(stored)).save(tmp_path / "in" / "IMG_0001.HEIC", exif=exif.tobytes(),
                                                          quality=95)
    photo = read_image(tmp_path / "in" / "IMG_0001.HEIC")
    assert photo.pixels.shape == (400, 512, 3)  # upright: as the astronaut is
    fresh = subprocess.run([sys.executable, "-c", "import sys; from mgfr_cli.faces.io import read_image; "
                            "print(read_image(sys.argv[1]).pixels.shape)", str(tmp_path / "in" / "IMG_0001.HEIC")],
                           capture_output=True, text=True)  # (here imageio, loaded by skimage, taught Pillow already)
    assert fresh.stdout.strip() == "(400, 512, 3)", fresh.stderr
    assert np.abs(photo.pixels.astype(int) - astronaut[:400]).mean() < 6  # (HEVC at quality 95)
    common = ("--model-root", tiny_root, "--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu")
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", *common)
    row = json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())[0]
    assert code == 0 and row["status"] == "restored" and row["faces"] >= 1, out + err
    written = Image.open(tmp_path / "out" / "IMG_0001.png")
    assert written.size == (512, 400) and written.getexif()[0x0132] == "2024:05:06 07:08:09"


def test_a_profile_of_another_colour_space_is_not_written_into_rgb_pixels(tmp_path):
    """A CMYK JPEG's CMYK profile was embedded into its RGB output (a profile that does not describe its pixels:
    viewers warn or misrender); an RGB or gray profile is still written back where it matches."""
    def profile(space: bytes) -> bytes:
        head = bytearray(128)
        head[16:20], head[36:40] = space, b"acsp"
        return bytes(head)

    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).convert("CMYK").save(tmp_path / "c.jpg",
                                                                                  icc_profile=profile(b"CMYK"))
    photo = read_image(tmp_path / "c.jpg")
    assert photo.pixels.shape == (16, 16, 3) and photo.meta.icc[16:20] == b"CMYK"
    write_image(tmp_path / "o.jpg", photo.pixels, meta=photo.meta)
    assert Image.open(tmp_path / "o.jpg").info.get("icc_profile") is None
    for space, pixels in ((b"RGB ", np.zeros((8, 8, 3), np.uint8)), (b"GRAY", np.zeros((8, 8), np.uint8))):
        write_image(tmp_path / "kept.png", pixels, meta=Metadata(icc=profile(space)))
        assert Image.open(tmp_path / "kept.png").info.get("icc_profile") == profile(space)
    from mgfr_cli.api import _like  # the Python API's PIL result alike

    assert "icc_profile" not in _like(photo.pixels, photo, "pil").info


def test_metadata_a_jpeg_cannot_hold_never_costs_the_photo(tmp_path, monkeypatch):
    """A PNG's (or a HEIC's) EXIF may be larger than a JPEG's 64 KB segment: `--ext jpg` raised "EXIF data is too
    long" and stopped the batch with a traceback. The EXIF is written without its maker note and user comment (the
    date and camera kept), an XMP too long for a JPEG is left out, and metadata Pillow refuses never costs the
    pixels."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0132] = "Canon", "2001:02:03 04:05:06"
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0" + b"x" * 100_000  # a 100 KB user comment
    pixels = np.full((16, 16, 3), 90, np.uint8)
    write_image(tmp_path / "a.jpg", pixels, meta=Metadata(exif=exif.tobytes(), xmp=b"<x:xmpmeta>" + b" " * 70_000 + b"</x:xmpmeta>"))
    written = Image.open(tmp_path / "a.jpg")
    kept = written.getexif()
    assert (kept[0x010F], kept[0x0132]) == ("Canon", "2001:02:03 04:05:06") and 0x9286 not in kept.get_ifd(0x8769)
    assert "xmp" not in written.info
    write_image(tmp_path / "a.png", pixels, meta=Metadata(exif=exif.tobytes()))  # a PNG holds it whole
    assert len(Image.open(tmp_path / "a.png").getexif().get_ifd(0x8769)[0x9286]) > 100_000
    monkeypatch.setattr("mgfr_cli.faces.io.save_options", lambda *a: {"exif": b"x" * 70_000})  # refused by Pillow
    write_image(tmp_path / "b.jpg", pixels, meta=Metadata(exif=exif.tobytes()))
    assert np.abs(read_image(tmp_path / "b.jpg").pixels.astype(int) - 90).max() <= 2


def test_a_photo_that_fails_to_write_does_not_stop_the_batch(tiny_root, tmp_path, cli, monkeypatch):
    """An unexpected error while one photo is written (an encoder's, a library's) stopped the whole batch with a
    traceback; that photo fails in one line now, and the photos after it are written."""
    import mgfr_cli.app.batch as batch

    real = batch.write_image

    def refusing(path, pixels, **kw):
        if path.name == "a.png":
            raise ValueError("the encoder refused")
        return real(path, pixels, **kw)

    monkeypatch.setattr(batch, "write_image", refusing)
    y, x = np.mgrid[0:40, 0:60]
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        _save(tmp_path / "in" / name, np.dstack([x * 3, y * 4, np.full_like(x, 90)]).astype(np.uint8))
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, "--steps", "1",
                         "--detector", "retinaface_mobile0.25", "--device", "cpu")
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())}
    assert code == 1 and rows["a.png"]["status"] == "failed", out + err
    assert "unexpected ValueError: the encoder refused" in rows["a.png"]["detail"]
    assert rows["b.png"]["status"] == "no face" and (tmp_path / "out" / "b.png").is_file()


@pytest.mark.parametrize("command", ["align", "degrade"])
def test_one_files_surprise_never_stops_align_or_degrade(tiny_root, tmp_path, cli, monkeypatch, command):
    """`align` and `degrade` caught only mgfr's own errors per file: any other (a detector's, an encoder's) stopped
    the run with a traceback. That file fails in one line now, as in `restore`, and the files after it are done."""
    import mgfr_cli.faces.helper as helper
    import mgfr_cli.training.degrade as degrade

    target, name = (helper.FaceHelper, "align_faces") if command == "align" else (degrade, "degrade")
    real = getattr(target, name)

    def refusing(*args, **kw):
        if refusing.calls == 0:
            refusing.calls += 1
            raise ValueError("a library refused")
        return real(*args, **kw)

    refusing.calls = 0
    monkeypatch.setattr(target, name, refusing)
    y, x = np.mgrid[0:40, 0:60]
    (tmp_path / "in").mkdir()
    for n in ("a.png", "b.png"):
        _save(tmp_path / "in" / n, np.dstack([x * 3, y * 4, np.full_like(x, 90)]).astype(np.uint8))
    extra = ["--detector", "retinaface_mobile0.25", "--device", "cpu", "--model-root", tiny_root]
    code, out, err = cli(command, tmp_path / "in", "-o", tmp_path / "out", *(extra if command == "align" else []))
    said = " ".join((out + err).split())
    assert code == 1 and "a.png: unexpected ValueError: a library refused" in said, out + err
    assert refusing.calls == 1 and "Traceback" not in said
    if command == "degrade":
        assert (tmp_path / "out" / "b.png").is_file() and not (tmp_path / "out" / "a.png").exists()
    else:  # b.png was looked at after a.png failed: faceless, it is listed as such
        assert "b.png" in said


def test_mgfr_debug_gives_the_traceback_instead_of_the_line(monkeypatch):
    """`unexpected` (every batch's one-line failure for a surprise) raises the error itself under MGFR_DEBUG=1."""
    from mgfr_cli.errors import unexpected

    error = ValueError("deep inside")
    monkeypatch.delenv("MGFR_DEBUG", raising=False)
    assert unexpected("a.png", error, "cannot write: ") == ("a.png: cannot write: unexpected ValueError: deep inside "
                                                             "(MGFR_DEBUG=1 for a traceback)")
    monkeypatch.setenv("MGFR_DEBUG", "1")
    with pytest.raises(ValueError, match="deep inside"):
        unexpected("a.png", error)


def test_a_webp_with_alpha_stays_a_webp_with_its_alpha(tiny_root, tmp_path, cli):
    """WebP holds alpha, but mgfr counted it with JPEG: an RGBA WebP came out as a PNG under `--ext auto` (a format
    change nobody asked for); it is written as a WebP, its alpha kept."""
    y, x = np.mgrid[0:40, 0:60]
    rgba = np.dstack([x * 3, y * 4, np.full_like(x, 90), (x * 4) % 256]).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgba).save(tmp_path / "in" / "sticker.webp", lossless=True)
    code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "out", "--model-root", tiny_root, "--steps", "1",
                         "--detector", "retinaface_mobile0.25", "--device", "cpu")
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").glob("sticker*")) == ["sticker.webp"], out + err
    assert np.array_equal(read_image(tmp_path / "out" / "sticker.webp").pixels[:, :, 3], rgba[:, :, 3])


def test_a_pil_image_is_turned_upright_once_as_its_file_is(tmp_path):
    """The Python API's PIL images are read as files are: a TIFF opened with `Image.open` (lazy) with an orientation
    tag was turned twice (the tag was read before loading, when Pillow turns TIFFs itself); a JPEG's tag turns it."""
    from mgfr_cli.faces.io import photo_of

    y, x = np.mgrid[0:60, 0:80]
    stored = np.dstack([x * 3, y * 4, np.full_like(x, 90)]).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    for name in ("s.tif", "s.jpg"):
        Image.fromarray(stored).save(tmp_path / name, exif=exif.tobytes())
        upright = read_image(tmp_path / name).pixels.shape
        assert photo_of(Image.open(tmp_path / name)).pixels.shape == upright == (80, 60, 3), name


def test_an_animations_note_names_the_frame_restored(tmp_path):
    """A file is restored from its first frame; a caller's PIL image from the frame it shows (seeked to): the note
    says which (it said 'the first' of both)."""
    from mgfr_cli.faces.io import photo_of

    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 100, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert read_image(tmp_path / "anim.gif").note == "only the first of 3 frames restored"
    shown = Image.open(tmp_path / "anim.gif")
    shown.seek(2)
    photo = photo_of(shown)
    assert photo.note == "only frame 3 of 3 restored" and photo.pixels.mean() == 200


def test_32_bit_integer_images_are_read_by_what_their_values_span(tmp_path):
    """A 32-bit integer TIFF came out white (an unsigned one: Pillow holds it as signed, so past 2**31 it went below
    zero, and the rest was clipped at 65535), or nearly black (one holding 8-bit values, as Pillow writes its mode I:
    taken for 16 bits), and Pillow's and tifffile's readers disagreed. One rule now, for files and PIL images."""
    import tifffile

    gray = np.tile(np.arange(256, dtype=np.uint32), (4, 1))
    tifffile.imwrite(tmp_path / "full.tif", gray * 16843009)  # unsigned, the whole 32-bit range (Pillow: mode I)
    tifffile.imwrite(tmp_path / "signed.tif", (gray.astype(np.int64) * 8421504 - 2**30).astype(np.int32))
    tifffile.imwrite(tmp_path / "rgb.tif", np.dstack([gray * 257] * 3), photometric="rgb")  # 16-bit values (tifffile)
    Image.fromarray(gray.astype(np.uint8)).convert("I").save(tmp_path / "pillow.tif")  # 8-bit values in 32 bits
    wide = read_image(tmp_path / "full.tif").pixels
    assert wide.dtype == np.uint16 and np.array_equal(wide >> 8, gray)
    assert np.array_equal(read_image(tmp_path / "rgb.tif").pixels[..., 1] >> 8, gray)
    below = read_image(tmp_path / "signed.tif").pixels  # signed: below zero is black, 2**31 - 1 white
    assert below.dtype == np.uint16 and below[0, 0] == 0 and below[0, 255] >> 8 == 127  # (2**30 of 2**31)
    in_memory = photo_of(Image.fromarray(gray.astype(np.uint8)).convert("I")).pixels
    for eight in (read_image(tmp_path / "pillow.tif").pixels, in_memory):
        assert eight.dtype == np.uint8 and np.array_equal(eight, gray)


def test_an_image_without_pixels_is_one_clear_error():
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((4, 0), np.uint16), Image.new("RGB", (0, 3))):
        with pytest.raises(InputError, match="the image has no pixels"):
            photo_of(empty)


def test_every_pil_mode_a_caller_may_hold_is_read(tmp_path):
    """The API takes any PIL image: premultiplied gray+alpha (`La`) raised Pillow's ValueError, and native-endian
    16-bit gray (`I;16N`) was cut to 8 bits where its siblings `I;16`, `I;16B` keep 16. Each mode against what it
    holds."""
    from mgfr_cli.faces.io import photo_of

    y, x = np.mgrid[0:40, 0:60]
    gray = (x * 3 + y).astype(np.uint8)
    la = Image.fromarray(np.dstack([gray, np.full_like(gray, 255)]), "LA")
    photo = photo_of(la.convert("La"))
    assert photo.pixels.shape == (40, 60, 4) and np.array_equal(photo.pixels[:, :, 0], gray)
    deep = (x * 1000 + y).astype(np.uint16)
    for mode, order in (("I;16", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")):
        px = photo_of(Image.frombytes(mode, (60, 40), deep.astype(order).tobytes())).pixels
        assert px.dtype == np.uint16 and np.array_equal(px, deep), mode
