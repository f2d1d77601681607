"""The web page (gradio_client against the real server, and a real Chromium) and the static review page."""

import shutil
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="the web extra is not installed (pip install -e '.[ui]')")

from mgfr_cli.faces.io import read_image  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
API = dict(api_name="/restore")


def _args(photo, refs=None, prompt="", steps=2):
    from gradio_client import handle_file

    return (handle_file(str(photo)), [handle_file(str(r)) for r in refs] if refs else None, prompt, "", 4.0, 2.0,
            steps, 0, "every face", "wavelet", 1, True, 0.05, 1.0, False)


@pytest.fixture(scope="module")
def server(tiny_root):
    from mgfr_cli.app.ui import build_app, load_models, offline_environment, serve

    offline_environment()
    models = load_models(tiny_root, detector="retinaface_mobile0.25", base=None, checkpoint=None, cleaner="auto",
                         bg_upsampler="none", device="cpu", precision="auto", max_megapixels=100)
    assert not models.missing
    demo = build_app(models)
    serve(demo, "127.0.0.1", None, False, 20.0, block=False)  # a float, as `mgfr ui --max-upload-mb` gives
    yield demo.local_url.rstrip("/"), models
    demo.close()
    shutil.rmtree(demo.mgfr_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def photo(tmp_path_factory, astronaut):
    d = tmp_path_factory.mktemp("ui")
    cv2.imwrite(str(d / "astro.png"), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    cv2.imwrite(str(d / "ref.png"), np.ascontiguousarray(astronaut[:256, 100:356, ::-1][:, ::-1]))
    return d / "astro.png", d / "ref.png"


def _changed_only_at_the_face(before: np.ndarray, after: np.ndarray):
    assert before.shape == after.shape
    diff = np.abs(before.astype(int) - after.astype(int)).sum(axis=2)
    assert diff[:, :20].max() == 0 and diff[200:].max() == 0  # far from the face: untouched
    assert diff[80:150, 100:150].mean() > 5  # the face: restored (random tiny weights, so changed)


def test_api_restores_with_a_reference_and_a_prompt(server, photo):
    from gradio_client import Client

    url, _ = server
    slider, gallery, download, status, clip = Client(url, verbose=False).predict(*_args(photo[0], [photo[1]], "brown eyes"),
                                                                              **API)
    before, after = (read_image(p).pixels for p in slider)
    _changed_only_at_the_face(read_image(photo[0]).pixels, after)
    assert np.array_equal(before, read_image(photo[0]).pixels)
    assert Path(download).suffix == ".png" and np.array_equal(read_image(download).pixels, after)  # lossless
    assert [g["caption"] for g in gallery] == ["face 00 aligned", "face 00 restored"]
    assert "mgfr" in status and clip["visible"] is False  # the clip player is for clips


def test_a_clip_is_restored_whole_with_its_audio(server, astronaut, tmp_path):
    """A video uploaded to the page takes `mgfr restore clip.mp4`'s way: every frame, the same timing, audio kept."""
    from gradio_client import Client

    av = pytest.importorskip("av")
    from test_video import make_clip, probe

    clip = make_clip(tmp_path / "clip.mp4", astronaut, frames=12)
    url, _ = server
    slider, gallery, download, status, restored = Client(url, verbose=False).predict(*_args(clip), **API)
    assert restored["visible"] is True, restored
    video = restored["value"]["video"] if isinstance(restored["value"], dict) else restored["value"]
    assert slider is None and gallery == [] and Path(download).suffix == ".mp4"
    (info_in, frames_in, audio_in), (info_out, frames_out, audio_out) = probe(clip), probe(video)
    assert info_out == info_in and audio_out == audio_in and audio_in and av is not None
    diff = [np.abs(a.astype(int) - b.astype(int)).mean() for (_, a), (_, b) in zip(frames_in, frames_out)]
    assert min(diff) > 0.5, diff  # every frame's face restored
    assert "12 frames, 1 track(s)" in status and "flicker" in status


def test_bad_upload_is_a_readable_error_and_the_server_keeps_serving(server, photo, tmp_path):
    from gradio_client import Client

    url, _ = server
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="not a readable image"):
        client.predict(*_args(bad), **API)
    blank = tmp_path / "blank.png"  # no face: said as that (the batch underneath writes it unrestored)
    cv2.imwrite(str(blank), np.full((64, 96, 3), 120, np.uint8))
    with pytest.raises(Exception, match=r"blank.png: no face detected$"):
        client.predict(*_args(blank), **API)
    slider = client.predict(*_args(photo[0]), **API)[0]
    assert Path(slider[1]).is_file()


def test_a_second_request_waits_in_the_queue(server, photo):
    from gradio_client import Client
    from gradio_client.utils import Status

    url, models = server
    started, release = threading.Event(), threading.Event()
    real = models.helper.detect_numbered  # what every way of finding faces goes through

    def blocking(*a, **kw):
        started.set()
        assert release.wait(120)
        return real(*a, **kw)

    models.helper.detect_numbered = blocking
    try:
        client = Client(url, verbose=False)
        first = client.submit(*_args(photo[0]), **API)
        assert started.wait(120), "the first job never started"
        second = client.submit(*_args(photo[0]), **API)
        deadline, seen = time.time() + 60, set()
        while time.time() < deadline and Status.IN_QUEUE not in seen:
            seen.add(second.status().code)
            time.sleep(0.1)
        assert Status.IN_QUEUE in seen, seen  # one job at a time: the second waits its turn
        assert not second.done()
    finally:
        release.set()
        models.helper.detect_numbered = real
    assert Path(first.result(timeout=120)[0][1]).is_file() and Path(second.result(timeout=120)[0][1]).is_file()


def test_missing_weights_the_page_starts_and_says_so(tmp_path):
    from mgfr_cli.app.ui import build_app, load_models, plain

    models = load_models(tmp_path, detector="retinaface_resnet50", base=None, checkpoint=None, cleaner="auto",
                         bg_upsampler="none", device="cpu", precision="auto", max_megapixels=100)
    assert "missing weights" in models.missing and "detection_Resnet50_Final.pth" in models.missing
    demo = build_app(models)  # builds: the page shows the message instead of a traceback
    assert any(plain(models.missing) in str(getattr(b, "value", "")) for b in demo.blocks.values())  # Markdown


def _browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium; `apt-get install chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    return sync_api


def test_real_browser_upload_prompt_click_and_slider(server, photo, tmp_path):
    sync_api = _browser()
    url, _ = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.locator("#photo input[type=file]").set_input_files(str(photo[0]))
        page.locator("#refs input[type=file]").set_input_files([str(photo[1])])
        page.locator("#prompt textarea").fill("brown eyes")
        page.locator("#restore").click()
        page.wait_for_function("document.querySelectorAll('#slider img').length >= 2", timeout=120_000)
        srcs = page.eval_on_selector_all("#slider img", "els => els.map(e => e.src)")
        page.wait_for_timeout(300)
        page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        browser.close()
    images = [cv2.imdecode(np.frombuffer(urllib.request.urlopen(s, timeout=30).read(), np.uint8), cv2.IMREAD_UNCHANGED)
              for s in srcs[:2]]
    before, after = (im[..., ::-1] for im in images)
    _changed_only_at_the_face(before, after)
    assert (tmp_path / "ui.png").stat().st_size > 10_000


def test_static_review_page_in_a_browser_offline(tiny_root, photo, tmp_path, cli):
    sync_api = _browser()
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(photo[0], inp / "a.png")
    shutil.copy(photo[1], inp / "b.png")
    (inp / "broken.jpg").write_bytes(b"nope")
    cv2.imwrite(str(inp / "wall.png"), np.full((120, 120, 3), 90, np.uint8))
    code, out, err = cli("restore", inp, "-o", tmp_path / "out", "--model-root", tiny_root, "--steps", "1",
                         "--detector", "retinaface_mobile0.25", "--device", "cpu")
    assert code == 1 and (tmp_path / "out" / "index.html").is_file()  # one failed: exit 1, page written anyway
    requests = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(offline=True)
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        page.goto((tmp_path / "out" / "index.html").as_uri())
        restored = page.locator("section.photo[data-status=restored]")
        assert restored.count() == 2
        assert page.locator("section.photo .face img").count() == 4  # each photo's face: aligned + restored
        assert page.locator("tr[data-status='failed']").count() == 1
        assert page.locator("tr[data-status='no face']").count() == 1
        assert "not a readable image" in page.inner_text("body")
        loaded = page.eval_on_selector_all("img", "els => els.every(e => e.complete && e.naturalWidth > 0)")
        page.locator("section.photo input[type=range]").first.fill("10")
        width = page.eval_on_selector("section.photo .before", "e => e.style.width")
        browser.close()
    assert loaded and width == "10%"
    assert all(u.startswith("file://") for u in requests)  # nothing but the page's own files


def test_progress_is_reported_per_denoising_step(server, photo, tmp_path):
    from mgfr_cli.app.ui import restore_one

    _, models = server
    seen = []
    restore_one(models, str(photo[0]), None, "", "", 4.0, 2.0, 3, 0, "every face", "wavelet", 1, True, tmp_path / "w",
                progress=lambda fraction, desc: seen.append((round(fraction, 3), desc)))
    assert seen == [(0.333, "denoising step 1/3"), (0.667, "denoising step 2/3"), (1.0, "denoising step 3/3")]


def test_sliders_no_face_could_use_are_said(server, photo, tmp_path):
    """Attribute guidance moved with nothing to avoid, identity guidance moved with no reference: said under the
    result (as the CLI names such flags); with what they act on, nothing is said."""
    from mgfr_cli.app.ui import restore_one

    _, models = server
    common = (4.0, 5.0, 1, 0, "every face", "wavelet", 1, True)
    *_, status = restore_one(models, str(photo[0]), None, "", "", *common, tmp_path / "a", identity_guidance=0.3)
    assert "**Not used:** attribute guidance" in status and "identity guidance (no face had references" in status
    *_, status = restore_one(models, str(photo[0]), None, "", "eyeglasses", *common, tmp_path / "b")
    assert "Not used" not in status, status


def test_what_a_photo_is_restored_without_is_said_under_it(server, photo, tmp_path):
    """An animated GIF is restored from its first frame: the CLI's summary and the API say so, the page said
    nothing. Said under the result now."""
    from PIL import Image

    from mgfr_cli.app.ui import restore_one

    _, models = server
    face = Image.open(photo[0]).convert("RGB")
    face.save(tmp_path / "wink.gif", save_all=True, append_images=[face.rotate(2), face.rotate(4)], duration=100)
    *_, status = restore_one(models, str(tmp_path / "wink.gif"), None, "", "", 4.0, 2.0, 1, 0, "every face",
                             "wavelet", 1, True, tmp_path / "w")
    assert "only the first of 3 frames restored" in status, status


def test_the_control_strength_slider_reaches_the_sampler(server, photo, monkeypatch):
    """The page's control strength is what every denoising step is given (through the page's own API)."""
    from gradio_client import Client

    url, models = server
    seen, real = [], models.pipeline._predict_fn

    def spy(*args):
        seen.append(args[7] if len(args) > 7 else 1.0)
        return real(*args)

    monkeypatch.setattr(models.pipeline, "_predict_fn", spy)
    args = list(_args(photo[0]))
    args[13] = 0.25
    Client(url, verbose=False).predict(*args, **API)
    assert seen and set(seen) == {0.25}

def test_the_face_upsample_box_reaches_the_paste(server, photo, monkeypatch):
    """The page's "face upsample" box does what `--face-upsample` does: at 4x the face (shown at 1.3x its crop)
    is enlarged by the page's Real-ESRGAN (a Lanczos stand-in here) before pasting; unticked, only the background."""
    from helpers import LanczosUpsampler as Lanczos

    from gradio_client import Client

    url, models = server
    for ticked in (True, False):
        up = Lanczos()
        monkeypatch.setattr(models, "upsampler", up)  # the page's own, as `mgfr ui` loads it
        args = list(_args(photo[0], steps=1))
        args[10], args[14] = 4, ticked
        Client(url, verbose=False).predict(*args, **API)
        assert up.sizes[0] == (1024, 1024)  # the background
        assert len(up.sizes) == (2 if ticked else 1) and all(640 < w == h < 700 for w, h in up.sizes[1:]), up.sizes


def test_a_seed_past_what_a_generator_takes_is_the_clis_error(server, photo):
    from gradio_client import Client

    url, _ = server
    args = list(_args(photo[0]))
    args[7] = 2**70
    with pytest.raises(Exception, match=r"--seed must be a whole number from 0 to 2\*\*63-1"):
        Client(url, verbose=False).predict(*args, **API)


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    script = (
        "import sys\nfrom pathlib import Path\nfrom mgfr_cli.app.ui import UiModels, build_app, offline_environment, serve\n"
        "offline_environment()\ndemo = build_app(UiModels(missing='test'))\n"
        "(demo.mgfr_tmp / 'job-1').mkdir()\n(demo.mgfr_tmp / 'job-1' / 'upload.png').write_bytes(b'x')\n"
        f"Path({str(tmp_path / 'tmp.txt')!r}).write_text(str(demo.mgfr_tmp))\n"
        f"serve(demo, '127.0.0.1', {port}, False, 10.0)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.5)
        else:
            pytest.fail("the page never answered")
        workdir = Path((tmp_path / "tmp.txt").read_text())
        assert (workdir / "job-1" / "upload.png").is_file()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not workdir.exists(), "SIGTERM left the user's files in the temporary folder"


def test_file_names_in_the_status_are_shown_as_written():
    """The status is Markdown: a library photo named with Markdown's characters is named whole, not made
    emphasis, a link or HTML."""
    from markdown_it import MarkdownIt

    from mgfr_cli.app.ui import library_found
    from mgfr_cli.faces.inputs import Outcome

    names = ["IMG_*1*_[a](b).jpg", "<b>x<i> #1 ~~s~~.png", "a\\_b `c`.jpg"]
    outcome = Outcome(Path("p.png"), "restored", library=({"face": 0, "matches": [
        {"file": f"lib/{n}", "similarity": 0.5} for n in names]},))
    html = MarkdownIt("commonmark").enable("strikethrough").render(library_found(outcome))
    html = html.split("</strong>", 1)[1]  # after the page's own bold label
    assert not any(tag in html for tag in ("<em>", "<strong>", "<a ", "<b>", "<i>", "<s>", "<code>")), html
    import html as h

    text = h.unescape(html)
    assert all(n in text for n in names), text


def test_a_full_disk_under_a_job_is_a_readable_error(server, photo, monkeypatch):
    """The page's job files meet a full disk: the CLI's one line, not Gradio's bare 'Error'; the server goes on."""
    import errno
    import os

    from gradio_client import Client

    import mgfr_cli.app.ui as ui

    url, _ = server
    real = ui.restore_one

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/mgfr-ui-x/job-9/out/astro.png")

    monkeypatch.setattr(ui, "restore_one", full)
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=r"job-9/out/astro.png: No space left on device; stopped"):
        client.predict(*_args(photo[0]), **API)
    monkeypatch.setattr(ui, "restore_one", real)
    assert Path(client.predict(*_args(photo[0]), **API)[0][1]).is_file()
