"""Fetching against a real HTTP server on 127.0.0.1 (nothing else is contacted)."""

import hashlib
import http.server
import shutil
import socket
import threading

import pytest
import yaml

from mgfr_cli.errors import WeightsError
from mgfr_cli.weights.files import check_entry, fetch_entry, load_manifest

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of real bytes
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    cut_after: int | None = None  # first GET of /file.bin sends only this many bytes, then drops the connection
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Range")))
        if self.path != "/file.bin":
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_after
        if cut is not None:
            type(self).cut_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    handler = type("H", (_Handler,), {"requests": [], "cut_after": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


def _manifest(tmp_path, url, sha=DIGEST, size=len(PAYLOAD), remote="file.bin"):
    data = {"entries": [{"name": "thing", "sources": [url], "license": "test", "used_by": "tests",
                         "files": [{"path": "sub/thing.bin", "remote": remote, "sha256": sha, "size": size}]}]}
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(data))
    return load_manifest(tmp_path / "manifest.yaml").get("thing")


def test_good_fetch_verifies_and_places(tmp_path, server):
    url, _ = server
    entry = _manifest(tmp_path, url)
    root = tmp_path / "root"
    assert fetch_entry(entry, root) == [root / "sub/thing.bin"]
    assert (root / "sub/thing.bin").read_bytes() == PAYLOAD
    assert [s.state for s in check_entry(entry, root)] == ["verified"]
    assert fetch_entry(entry, root) == []  # already there: nothing downloaded


@pytest.mark.parametrize("size", [len(PAYLOAD), None])
def test_cut_connection_then_resume(tmp_path, server, size):
    url, handler = server
    handler.cut_after = 300_000
    entry = _manifest(tmp_path, url, size=size)
    root = tmp_path / "root"
    with pytest.raises(WeightsError, match="run the fetch again to resume"):
        fetch_entry(entry, root, timeout=5)
    part = root / "sub/thing.bin.part"
    assert part.is_file() and 0 < part.stat().st_size < len(PAYLOAD) and not (root / "sub/thing.bin").exists()
    have = part.stat().st_size
    fetch_entry(entry, root, timeout=5)
    assert (root / "sub/thing.bin").read_bytes() == PAYLOAD and not part.exists()
    assert handler.requests[-1][1] == f"bytes={have}-"  # resumed, not restarted


def test_wrong_checksum_leaves_nothing(tmp_path, server):
    url, _ = server
    entry = _manifest(tmp_path, url, sha="0" * 64)
    root = tmp_path / "root"
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        fetch_entry(entry, root)
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_404_and_no_network(tmp_path, server):
    url, _ = server
    with pytest.raises(WeightsError, match="HTTP 404"):
        fetch_entry(_manifest(tmp_path, url, remote="nothing.bin"), tmp_path / "root")
    # a port on loopback where nobody listens stands for "no network"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    with pytest.raises(WeightsError, match="no network or host unreachable") as info:
        fetch_entry(_manifest(tmp_path, f"http://127.0.0.1:{dead}"), tmp_path / "root", timeout=2)
    assert "\n" not in str(info.value)


def test_second_source_used_when_first_fails(tmp_path, server):
    url, _ = server
    data = {"entries": [{"name": "thing", "sources": [url + "/missing", url],
                         "files": [{"path": "thing.bin", "remote": "file.bin", "sha256": DIGEST}]}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    fetch_entry(load_manifest(tmp_path / "m.yaml").get("thing"), tmp_path / "root")
    assert (tmp_path / "root/thing.bin").read_bytes() == PAYLOAD


def test_unpinned_needs_consent_and_records_the_hash(tmp_path, server):
    url, _ = server
    entry = _manifest(tmp_path, url, sha=None, size=None)
    root = tmp_path / "root"
    with pytest.raises(WeightsError, match="--allow-unpinned"):
        fetch_entry(entry, root)
    fetch_entry(entry, root, allow_unpinned=True)
    assert yaml.safe_load((root / "pins.yaml").read_text()) == {"sub/thing.bin": DIGEST}
    (root / "sub/thing.bin").write_bytes(b"tampered")
    assert [s.state for s in check_entry(entry, root)] == ["corrupt"]



def test_two_fetches_pinning_at_once_keep_both_pins(tmp_path, monkeypatch):
    """Two unpinned files fetched at the same instant (two commands, or the web page beside a shell) each record
    their SHA-256 in pins.yaml: the second read waits for the first write, so neither pin is lost."""
    from mgfr_cli.weights import files

    (root := tmp_path / "root").mkdir()
    real_read, first_read, second_read = files.read_pins, threading.Event(), threading.Event()

    def slow_read(r):  # the first writer holds its read until the second has read too, or 2 s have passed
        pins = real_read(r)
        if not first_read.is_set():
            first_read.set()
            second_read.wait(2)
        else:
            second_read.set()
        return pins

    monkeypatch.setattr(files, "read_pins", slow_read)
    one = threading.Thread(target=files.write_pin, args=(root, "a.bin", "1" * 64))
    one.start()
    assert first_read.wait(30)
    files.write_pin(root, "b.bin", "2" * 64)
    one.join(30)
    assert yaml.safe_load((root / "pins.yaml").read_text()) == {"a.bin": "1" * 64, "b.bin": "2" * 64}

def test_cli_weights_commands(tmp_path, server, cli):
    url, _ = server
    _manifest(tmp_path, url)
    args = ["--manifest", tmp_path / "manifest.yaml", "--model-root", tmp_path / "root"]
    code, out, _ = cli("weights", "fetch", "thing", *args)
    assert code == 0 and "placed 1 file" in out
    code, out, _ = cli("weights", "check", *args)
    assert code == 0 and "verified" in out
    (tmp_path / "root/sub/thing.bin").write_bytes(b"x" * len(PAYLOAD))
    code, out, _ = cli("weights", "check", *args)
    assert code == 1 and "corrupt" in out


def test_repository_manifest_is_valid():
    m = load_manifest()
    names = {e.name for e in m.entries}
    assert {"retinaface_resnet50", "retinaface_mobile0.25", "parsenet", "arcface", "sd21-base", "mgfr-adapter",
            "diffbir-v2", "diffbir-v1-face", "diffbir-v2.1", "swinir-codeformer", "swinir-face", "realesrgan-x2",
            "realesrgan-x4"} <= names
    for e in m.entries:
        assert e.license and e.used_by
    # only hashes that belong to the source a file is fetched from (the shared detector fixture is a re-saved copy)
    assert m.get("retinaface_mobile0.25").files[0].sha256 is None
    assert m.get("realesrgan-x2").files[0].sha256.startswith("49fafd45") and m.get("diffbir-v2.1").incompatible
    assert "NON-COMMERCIAL" in m.get("swinir-face").license and m.get("diffbir-v2").convert == "diffbir"


@pytest.mark.parametrize("second, message", [
    ({"name": "thing", "files": [{"path": "other.bin"}]}, "entry 'thing' is given twice"),
    ({"name": "mirror", "files": [{"path": "thing.bin", "sha256": "0" * 64}]}, "file 'thing.bin' is also listed by entry 'thing'"),
])
def test_a_manifest_naming_an_entry_or_a_file_twice_is_refused(tmp_path, second, message):
    """The first would win and the second (a mirror's other hash, say) be dropped without a word."""
    from mgfr_cli.errors import ConfigError

    first = {"name": "thing", "sources": ["http://127.0.0.1:9"], "files": [{"path": "thing.bin"}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"entries": [first, {"sources": ["http://127.0.0.1:9"], **second}]}))
    with pytest.raises(ConfigError, match=rf"m.yaml: entries\[1\]: {message}"):
        load_manifest(tmp_path / "m.yaml")


def test_doctor_is_truthful_here(cli, tmp_path, detector_root):
    code, out, _ = cli("doctor", "--model-root", detector_root)
    text = " ".join(out.split())
    assert code == 1
    assert "retinaface_mobile0.25: unpinned" in text and "sd21-base: missing" in text and "diffbir-v2: missing" in text
    assert "ok mgfr align" in text and "no mgfr restore" in text


def test_what_outputs_are_made_with_covers_every_weights_file_a_restore_reads(tiny_root, tmp_path):
    """The recipe's weights (a rerun with others lists the outputs as made otherwise) are the detector, base,
    adapter, cleaner and background upsampler the plan names: each choice gives another fingerprint."""
    from mgfr_cli.model.cleaner import CLEANERS
    from mgfr_cli.model.upsampler import UPSAMPLERS
    from mgfr_cli.weights.files import fingerprint
    from mgfr_cli.weights.provision import plan_restore

    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    for i, file in enumerate((CLEANERS["swinir-face"][1], UPSAMPLERS["realesrgan-x2"][1],
                              UPSAMPLERS["realesrgan-x4"][1])):
        (root / file).write_bytes(bytes([i]) * 1000)  # what each holds is all a fingerprint reads

    def plan(**kw):
        args = dict(detector="retinaface_mobile0.25", base=None, checkpoint=None, cleaner="none", bg_upsampler="none",
                    upscale=1.0, offline=True, identity_guidance=0)
        return plan_restore(root, load_manifest(), **{**args, **kw})

    assert plan().files() == [root / "detection_mobilenet0.25_Final.pth", root / "sd21-base", root / "mgfr-adapter"]
    choices = ({}, {"detector": None}, {"cleaner": "swinir-face"}, {"upscale": 2.0, "bg_upsampler": "realesrgan-x2"},
               {"upscale": 2.0, "bg_upsampler": "realesrgan-x4"})
    assert len({fingerprint(plan(**kw).files()) for kw in choices}) == len(choices)
