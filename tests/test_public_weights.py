"""Restoring with public weights: DiffBIR's IRControlNet as the LCA, SwinIR cleaner, Real-ESRGAN background.

The converter is checked against ``tests/fixtures/diffbir`` (a golden file made by DiffBIR's own class,
and the full-size key table), the spandrel loaders against the real files' key layouts
(``tests/fixtures/spandrel``); nothing is downloaded except from a loopback server.
"""

import hashlib
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import FIXTURES, MOBILENET, tiny_base
from mgfr_cli.weights.convert import convert_diffbir, diffbir_to_mgfr_key, lca_template, map_diffbir_state
from mgfr_cli.errors import WeightsError
from mgfr_cli.faces.io import read_image

GOLDEN = FIXTURES / "diffbir" / "diffbir_tiny_golden.safetensors"
SPANDREL = FIXTURES / "spandrel"
TINY = ["--detector", "retinaface_mobile0.25", "--device", "cpu", "--steps", "2"]


def _table(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()[1:]]
    return [(r[0], tuple(int(x) for x in r[1].split("x")) if r[1] else (), r[-1]) for r in rows]


def _random_state(path: Path, seed: int = 0) -> dict:
    """Random tensors with a real file's key layout (index buffers as zeros: only their shape matters)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.zeros(s, dtype=getattr(torch, d)) if d.startswith("int") else torch.randn(s, generator=g) * 0.02
            for k, s, d in _table(path)}


def _golden():
    meta = safe_open(str(GOLDEN), "pt").metadata()
    tensors = load_file(GOLDEN)
    state = {k[len("diffbir."):]: v for k, v in tensors.items() if k.startswith("diffbir.")}
    return json.loads(meta["mgfr_config"]), state, tensors


def _save_pth(state: dict, path: Path, wrap: str | None = "state_dict", prefix: str = "") -> Path:
    body = {prefix + k: v for k, v in state.items()}
    torch.save({wrap: body} if wrap else body, path)
    return path


# -- the converter ------------------------------------------------------------------------------
def test_golden_fixture_reproduced_after_conversion(tmp_path):
    cfg, state, tensors = _golden()
    unet_cfg = {k: v for k, v in cfg.items() if k != "use_reference"}
    src = _save_pth(state, tmp_path / "v2.pth", wrap="state_dict", prefix="module.")  # DiffBIR's wrappers
    folder = convert_diffbir(src, tmp_path / "lca", unet_config=unet_cfg)
    from mgfr_cli.model.loading import load_adapter

    adapter = load_adapter(folder).eval()
    assert adapter.config.source == "diffbir-v2" and adapter.config.stages_trained == [1]
    assert adapter.config.prediction_type == "epsilon" and not adapter.config.use_reference
    with torch.no_grad():
        out = adapter(tensors["input.x"], tensors["input.t"], tensors["input.context"], tensors["input.hint"])
    got = list(out.down) + [out.mid]
    assert len(got) == 13
    for i, g in enumerate(got):
        assert (g - tensors[f"output.{i}"]).abs().max() <= 1e-3, f"output {i}"


def test_full_size_table_maps_one_to_one_onto_the_default_adapter():
    from mgfr_cli.configs import load_model_config

    template = lca_template(load_model_config("mgfr-sd21").base["unet"])  # meta device: no memory
    state = {k: torch.empty(s, device="meta") for k, s, _ in _table(FIXTURES / "diffbir" / "diffbir_v2_controlnet_keys.tsv")}
    mapped = map_diffbir_state(state, template, "v2.pth")
    assert len(state) == 324 and len(mapped) == 324 == len(template.state_dict())
    # the same mapping as the independently verified table
    table = [line.split("\t") for line in (FIXTURES / "diffbir" / "diffbir_to_mgfr_keymap.tsv").read_text().splitlines()[1:]]
    assert all(diffbir_to_mgfr_key(a, 4, 2) == b for a, b, _ in table)


@pytest.mark.parametrize("case, message", [
    ("missing", "not in the file"),
    ("extra", "no place in the LCA"),
    ("hint", "image hint block"),
    ("conv4", "input conv takes 4 channels"),
    ("shape", "has shape"),
    ("not_a_dict", "not a state dict"),
])
def test_converter_refuses_what_does_not_fit(tmp_path, case, message):
    cfg, state, _ = _golden()
    unet_cfg = {k: v for k, v in cfg.items() if k != "use_reference"}
    state = dict(state)
    if case == "missing":
        state.pop("middle_block_out.0.weight")
    elif case == "extra":
        state["output_blocks.0.0.in_layers.0.weight"] = torch.zeros(3)
    elif case == "hint":
        state["input_hint_block.0.weight"] = torch.zeros(16, 3, 3, 3)
    elif case == "conv4":
        state["input_blocks.0.0.weight"] = state["input_blocks.0.0.weight"][:, :4]
    elif case == "shape":
        state["zero_convs.3.0.weight"] = torch.zeros(5, 5, 1, 1)
    src = tmp_path / "v2.pth"
    torch.save([1, 2] if case == "not_a_dict" else state, src)
    with pytest.raises(WeightsError, match=message) as info:
        convert_diffbir(src, tmp_path / "lca", unet_config=unet_cfg)
    assert "\n" not in str(info.value) and str(src) in str(info.value)
    assert not (tmp_path / "lca").exists()


def test_diffbir_v21_refused_by_name_and_by_recorded_hash(tmp_path, cli):
    cfg, state, _ = _golden()
    unet_cfg = {k: v for k, v in cfg.items() if k != "use_reference"}
    named = _save_pth(state, tmp_path / "DiffBIR_v2.1.pt")
    with pytest.raises(WeightsError, match="v-prediction"):
        convert_diffbir(named, tmp_path / "a", unet_config=unet_cfg)
    # renamed, it is still refused once its hash was recorded by `mgfr weights fetch diffbir-v2.1`
    renamed = tmp_path / "innocent.pth"
    shutil.copy(named, renamed)
    convert_diffbir(renamed, tmp_path / "ok", unet_config=unet_cfg)  # unknown hash: converts
    root = tmp_path / "root"
    root.mkdir()
    (root / "pins.yaml").write_text(yaml.safe_dump({"DiffBIR_v2.1.pt": hashlib.sha256(named.read_bytes()).hexdigest()}))
    code, _, err = cli("weights", "convert", "diffbir", renamed, "-o", tmp_path / "b", "--model-root", root)
    assert code == 1 and "diffbir-v2.1" in err and "v-prediction" in err and not (tmp_path / "b").exists()


# -- spandrel: cleaner and background upsampler -------------------------------------------------
@pytest.mark.parametrize("table, arch, scale", [
    ("swinir_diffbir_keys.tsv", "SwinIR", 1),
    ("RealESRGAN_x2plus_keys.tsv", "ESRGAN", 2),
    ("RealESRGAN_x4plus_keys.tsv", "ESRGAN", 4),
])
def test_spandrel_recognises_the_real_layouts_and_mgfr_runs_them(tmp_path, table, arch, scale):
    from mgfr_cli.model.cleaner import Cleaner
    from mgfr_cli.model.upsampler import BackgroundUpsampler

    state = _random_state(SPANDREL / table)
    path = tmp_path / "model.pth"
    if arch == "SwinIR":
        _save_pth(state, path, wrap="state_dict", prefix="module.")  # how DiffBIR's files may come
        cleaner = Cleaner(path)
        x = torch.rand(2, 3, 96, 96) * 2 - 1
        y = cleaner(x)
        assert cleaner.model.name == "SwinIR" and y.shape == x.shape and bool(torch.isfinite(y).all())
        assert (y - x).abs().mean() > 1e-3  # it did something (random weights)
    else:
        _save_pth(state, path, wrap="params_ema")  # the Real-ESRGAN release wrapper
        up = BackgroundUpsampler(path, scale)
        rgb = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
        out = up(rgb, (52 * scale, 40 * scale))
        assert up.model.name == "ESRGAN" and up.model.scale == scale and out.shape == (40 * scale, 52 * scale, 3)
        with pytest.raises(WeightsError, match=f"upscales x{scale}"):
            BackgroundUpsampler(path, 8 // scale if scale != 4 else 2)


def test_tiled_upsampling_equals_untiled(tmp_path):
    from mgfr_cli.model.upsampler import SpandrelModel

    path = _save_pth(_random_state(SPANDREL / "RealESRGAN_x2plus_keys.tsv"), tmp_path / "x2.pth", wrap="params_ema")
    model = SpandrelModel(path, expect_scale=2)
    x = torch.rand(1, 3, 150, 170, generator=torch.Generator().manual_seed(0))
    whole = model.run(x)
    tiled = model.run_tiled(x, tile=64, overlap=16, context=32)  # 3 x 4 tiles
    assert tiled.shape == whole.shape == (1, 3, 300, 340)
    assert (tiled - whole).abs().max() < 1e-4


# -- restore with a converted DiffBIR LCA ----------------------------------------------------------
def _to_diffbir_key(key: str, layers: int) -> str:
    """mgfr LCA key -> DiffBIR ControlNet key (the inverse layout, written independently of convert.py)."""
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    rules = [
        (r"lca\.time_embedding\.linear_1\.(.*)", lambda m: f"time_embed.0.{m[1]}"),
        (r"lca\.time_embedding\.linear_2\.(.*)", lambda m: f"time_embed.2.{m[1]}"),
        (r"lca\.conv_in\.(.*)", lambda m: f"input_blocks.0.0.{m[1]}"),
        (r"lca\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)",
         lambda m: f"input_blocks.{1 + int(m[1]) * (layers + 1) + int(m[2])}.0.{res[m[3]]}.{m[4]}"),
        (r"lca\.down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)",
         lambda m: f"input_blocks.{1 + int(m[1]) * (layers + 1) + int(m[2])}.1.{m[3]}"),
        (r"lca\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda m: f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"),
        (r"lca\.mid_block\.resnets\.(\d)\.(\w+)\.(.*)", lambda m: f"middle_block.{2 * int(m[1])}.{res[m[2]]}.{m[3]}"),
        (r"lca\.mid_block\.attentions\.0\.(.*)", lambda m: f"middle_block.1.{m[1]}"),
        (r"lca_down_zero\.(\d+)\.(.*)", lambda m: f"zero_convs.{m[1]}.0.{m[2]}"),
        (r"lca_mid_zero\.(.*)", lambda m: f"middle_block_out.0.{m[1]}"),
    ]
    for pattern, make in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return make(m)
    raise KeyError(key)


def tiny_diffbir_checkpoint(base, path: Path, seed: int = 3) -> Path:
    """A DiffBIR-layout ControlNet for the tiny base, every path (zero convs included) random."""
    from mgfr_cli.model.adapter import MgfrAdapter

    torch.manual_seed(seed)
    lca = MgfrAdapter.from_unet(base.unet, use_reference=False)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in lca.state_dict().items():
        if torch.count_nonzero(v) == 0 or k.startswith("lca.conv_in"):
            v = torch.randn(v.shape, generator=g) * 0.2
        state[_to_diffbir_key(k, base.unet.config.layers_per_block)] = v
    torch.save(state, path)
    return path


def _tiny_esrgan(path: Path, scale: int = 2) -> Path:
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

    torch.manual_seed(0)
    net = RRDBNet(num_filters=16, num_blocks=1, scale=scale, shuffle_factor=2 if scale == 2 else None)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def diffbir_root(tmp_path_factory):
    """A model root as a first run leaves it: detector, tiny base, DiffBIR v2 file + cleaner + x2 upsampler."""
    root = tmp_path_factory.mktemp("dbroot")
    shutil.copy(MOBILENET, root / MOBILENET.name)
    base = tiny_base()
    base.save(root / "sd21-base")
    tiny_diffbir_checkpoint(base, root / "v2.pth")
    _save_pth(_random_state(SPANDREL / "swinir_diffbir_keys.tsv"), root / "face_swinir_v1.ckpt", prefix="module.")
    _tiny_esrgan(root / "RealESRGAN_x2plus.pth")
    return root


def test_restore_end_to_end_with_a_converted_diffbir_adapter(diffbir_root, astronaut, tmp_path, cli):
    import cv2

    code, out, err = cli("weights", "convert", "diffbir", diffbir_root / "v2.pth", "-o", diffbir_root / "diffbir-v2-lca",
                         "--model-root", diffbir_root)
    assert code == 0, out + err
    src = tmp_path / "in" / "astro.png"
    src.parent.mkdir()
    cv2.imwrite(str(src), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    # references with the DiffBIR prior need the recogniser of identity guidance: offline, its absence is named
    code, _, err = cli("restore", src, "-o", tmp_path / "no", "--model-root", diffbir_root, "--ref", src, *TINY)
    assert code == 1 and "recognition_arcface_ir_se50.pth" in err and "--identity-guidance 0" in err
    code, out, err = cli("restore", src, "-o", tmp_path / "out", "--model-root", diffbir_root, "--ref", src,
                         "--prompt", "brown eyes", "--upscale", "2", "--bg-upsampler", "realesrgan-x2",
                         "--identity-guidance", "0", *TINY)
    assert code == 0, out + err
    result = read_image(tmp_path / "out" / "astro.png").pixels
    assert result.shape == (512, 512, 3)
    text = " ".join(err.split())
    assert "references given but not used" in text and "diffbir-v2" in text and "--identity-guidance 0" in text
    assert text.count("note:") == 1
    # without --bg-upsampler the background is only resized: the upsampler is what made the difference
    code, _, _ = cli("restore", src, "-o", tmp_path / "plain", "--model-root", diffbir_root, "--upscale", "2",
                     "--bg-upsampler", "none", *TINY)
    plain = read_image(tmp_path / "plain" / "astro.png").pixels
    assert code == 0 and plain.shape == result.shape
    assert np.abs(plain[:100, :100].astype(int) - result[:100, :100]).mean() > 2  # far from the face
    # asked for by name, it cleans the background at --upscale 1 too (as GFPGAN's and CodeFormer's do); auto does not
    one = {}
    for choice in ("realesrgan-x2", "none"):
        code, out, err = cli("restore", src, "-o", tmp_path / f"x1-{choice}", "--model-root", diffbir_root,
                             "--bg-upsampler", choice, *TINY)
        assert code == 0, out + err
        one[choice] = read_image(tmp_path / f"x1-{choice}" / "astro.png").pixels
    assert one["none"].shape == (256, 256, 3)
    assert np.abs(one["realesrgan-x2"][:50, :50].astype(int) - one["none"][:50, :50]).mean() > 2
    from mgfr_cli import Restorer  # loaded by auto for upscale 2 (as the web page loads it), asked for 1: not run

    auto = Restorer.load(diffbir_root, upscale=2, detector="retinaface_mobile0.25", device="cpu", offline=True)
    assert auto.upsampler is not None and np.array_equal(auto.restore(src, steps=2).image, one["none"])


def test_diffbir_profile_prompts_cleaner_and_start(diffbir_root, astronaut):
    """A DiffBIR LCA is sampled as DiffBIR was trained: plain prompt, its negative prompt, E(clean(LQ))."""
    from mgfr_cli.model.base import load_base
    from mgfr_cli.faces.conditions import FaceConditions
    from mgfr_cli.model.pipeline import MgfrPipeline, RestoreSettings
    from mgfr_cli.model.loading import load_adapter
    from mgfr_cli.model.profiles import DIFFBIR_NEGATIVE

    folder = convert_diffbir(diffbir_root / "v2.pth", diffbir_root / "lca-profile",
                             unet_config=json.loads((diffbir_root / "sd21-base/unet/config.json").read_text()))
    base = load_base(diffbir_root / "sd21-base")
    adapter = load_adapter(folder, base.unet, base.scheduler_config)
    crop = np.ascontiguousarray(astronaut[:512, :512])
    gray = np.full_like(crop, 128)
    settings = RestoreSettings(steps=2, color_fix="none")
    cond = [FaceConditions(prompt="brown eyes")]

    def run(cleaner, image, **kw):
        pipe = MgfrPipeline(base, adapter, cleaner=cleaner)
        return pipe, pipe.restore([image], cond, RestoreSettings(**{**settings.__dict__, **kw})).images[0]

    pipe, plain = run(None, crop)
    assert {"brown eyes", DIFFBIR_NEGATIVE} <= set(pipe._prompt_cache)
    assert pipe.profile.default_guidance == 3.0 and pipe.profile.default_steps == 50
    # the cleaner's output is what gets encoded: a cleaner that returns mid-gray == restoring a gray face
    _, cleaned = run(lambda x: torch.full_like(x, 128 / 127.5 - 1), crop)
    _, from_gray = run(None, gray)
    assert np.abs(cleaned.astype(int) - plain).max() > 5
    assert np.abs(cleaned.astype(int) - from_gray).max() <= 1
    # --start-from cond: the first latents are the condition latent noised to t = T-1, not pure noise
    first = {}
    for start in ("noise", "cond"):
        MgfrPipeline(base, adapter).restore([crop], cond, RestoreSettings(steps=2, start_from=start),
                                            callback=lambda i, t, x, s=start: first.setdefault(s, x.clone()))
    assert (first["cond"] - first["noise"]).abs().max() > 0.05


def test_train_stage1_starts_from_a_converted_diffbir_lca(diffbir_root, tmp_path):
    from mgfr_cli.model.loading import load_adapter
    from mgfr_cli.training.train import train
    from mgfr_cli.training.train_config import load_train_config

    folder = diffbir_root / "lca-init"
    convert_diffbir(diffbir_root / "v2.pth", folder,
                    unet_config=json.loads((diffbir_root / "sd21-base/unet/config.json").read_text()))
    data = tmp_path / "data"
    data.mkdir()
    import skimage.data
    from PIL import Image

    Image.fromarray(skimage.data.astronaut()[:384, 64:448]).resize((128, 128)).save(data / "a.png")
    cfg = load_train_config(None, dict(model="mgfr-tiny", max_steps=1, batch_size=1, learning_rate=1e-9,
                                       lr_warmup_steps=1, num_workers=0, checkpoint_every=10))
    final = train(cfg, base_path=diffbir_root / "sd21-base", data_dir=data, run_dir=tmp_path / "run", init=folder)
    trained, start = load_adapter(final), load_adapter(folder)
    s, t = start.state_dict(), trained.state_dict()
    lca = [k for k in s if k.startswith(("lca.", "lca_down_zero", "lca_mid_zero"))]
    assert len(lca) == len(s) and all((t[k] - s[k]).abs().max() < 1e-4 for k in lca)
    assert trained.config.use_reference and trained.config.stages_trained == [1]  # stage 2 can follow


# -- first run: fetch what restore needs ---------------------------------------------------------------
@pytest.fixture
def weight_server(diffbir_root):
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(diffbir_root), **kw)

        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()


def _manifest_for(root: Path, url: str, out: Path) -> Path:
    base_files = sorted(str(p.relative_to(root)) for p in (root / "sd21-base").rglob("*") if p.is_file())
    digest = hashlib.sha256((root / "v2.pth").read_bytes()).hexdigest()
    entries = [
        {"name": "retinaface_mobile0.25", "license": "MIT", "used_by": "detection", "sources": [url],
         "files": [{"path": MOBILENET.name}]},
        {"name": "sd21-base", "license": "RAIL", "used_by": "base", "sources": [url + "/sd21-base"],
         "files": [{"path": p} for p in base_files]},
        {"name": "diffbir-v2", "license": "Apache-2.0", "used_by": "LCA", "convert": "diffbir", "sources": [url],
         "files": [{"path": "v2.pth", "sha256": digest, "size": (root / "v2.pth").stat().st_size}]},
        {"name": "swinir-face", "license": "NON-COMMERCIAL provenance", "used_by": "cleaner", "sources": [url],
         "files": [{"path": "face_swinir_v1.ckpt"}]},
    ]
    out.write_text(yaml.safe_dump({"entries": entries}))
    return out


def test_first_run_fetches_verifies_and_converts(diffbir_root, weight_server, astronaut, tmp_path, cli, monkeypatch):
    import cv2

    url, requests = weight_server
    monkeypatch.setenv("MGFR_MANIFEST", str(_manifest_for(diffbir_root, url, tmp_path / "manifest.yaml")))
    src = tmp_path / "astro.jpg"
    cv2.imwrite(str(src), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    root = tmp_path / "fresh"
    # offline: the one-line error, and not one request
    code, _, err = cli("restore", src, "-o", tmp_path / "o1", "--model-root", root, "--offline", *TINY)
    assert code == 1 and err.startswith("error: missing weights:") and "offline" in err and requests == []
    monkeypatch.delenv("MGFR_OFFLINE")
    code, out, err = cli("restore", src, "-o", tmp_path / "o2", "--model-root", root, *TINY)
    assert code == 0, out + err
    assert "first run" in err and "diffbir-v2" in err and "Apache-2.0" in err
    assert "swinir-face" in err and "NON-COMMERCIAL" in err  # every file's licence, before downloading
    assert (tmp_path / "o2" / "astro.jpg").is_file()
    assert (root / "v2.pth").read_bytes() == (diffbir_root / "v2.pth").read_bytes()
    assert json.loads((root / "diffbir-v2-lca" / "config.json").read_text())["source"] == "diffbir-v2"
    pins = yaml.safe_load((root / "pins.yaml").read_text())  # unpinned files: hash recorded on first download
    assert pins["face_swinir_v1.ckpt"] == hashlib.sha256((diffbir_root / "face_swinir_v1.ckpt").read_bytes()).hexdigest()
    assert "v2.pth" not in pins  # pinned in the manifest: verified against it, nothing to record
    # a second run downloads nothing
    n = len(requests)
    code, _, _ = cli("restore", src, "-o", tmp_path / "o3", "--model-root", root, *TINY)
    assert code == 0 and len(requests) == n
