import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from mgfr_cli.faces.helper import resize_face
from mgfr_cli.faces.io import read_image

FAST = ["--steps", "2", "--detector", "retinaface_mobile0.25", "--device", "cpu"]


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]) if rgb.ndim == 3 else rgb)
    return path


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; from mgfr_cli.cli import app; sys.argv=['mgfr','--help']\n" \
           "try: app()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_version_names_mgfr_torch_and_diffusers_without_importing_torch():
    """`mgfr --version` (what a bug report starts with) was "No such option"."""
    from importlib.metadata import version

    code = "import sys; from mgfr_cli.cli import main; sys.argv=['mgfr','--version']\n" \
           "try: main()\nexcept SystemExit as e: print('torch' in sys.modules, e.code)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    line, imported = done.stdout.strip().splitlines()
    assert line.startswith(f"mgfr {version('mgfr')} (torch {version('torch')}, diffusers {version('diffusers')}, Python ")
    assert imported == "False 0", done.stdout + done.stderr


def test_help_shows_every_option_and_default_in_80_columns(monkeypatch):
    """Each command's help names every option in full and keeps each default the help text states in brackets
    (rich's help cut names to '--identity-guid...' at 80 columns and read '[default: ...]' as markup)."""
    import typer
    from typer.testing import CliRunner

    from mgfr_cli.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    root = typer.main.get_command(app)
    commands = [([name], cmd) for name, cmd in root.commands.items()]
    commands += [(path + [name], sub) for path, cmd in list(commands) for name, sub in getattr(cmd, "commands", {}).items()]
    checked = 0
    for path, cmd in commands:
        result = CliRunner().invoke(app, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0, (path, result.output)
        text = " ".join(result.output.split())
        for param in cmd.params:
            for opt in param.opts if param.param_type_name == "option" else ():
                assert opt in text.split(" ") or f"{opt}," in text or f"{opt}/" in text, (path, opt)
            stated = param.help or "" if param.param_type_name == "option" else ""
            if "[default:" in stated:  # a default said in words, e.g. '[default: 30; 50 for a DiffBIR adapter]'
                assert " ".join(stated[stated.index("[default:"):].split()) in text, (path, param.name)
                checked += 1
    assert checked >= 5


def test_restore_real_photo_with_tiny_checkpoint(tiny_root, astronaut, tmp_path, cli):
    src = _write(tmp_path / "in" / "astro.png", astronaut)
    before = src.read_bytes()
    code, out, err = cli("restore", src, "-o", tmp_path / "out", "--model-root", tiny_root, "--save-faces",
                         "--prompt", "brown eyes", "--ref", src, *FAST)
    assert code == 0, out + err
    result = read_image(tmp_path / "out" / "astro.png").pixels
    assert result.shape == astronaut.shape and src.read_bytes() == before
    diff = np.abs(result.astype(int) - astronaut.astype(int)).sum(axis=2)
    assert diff[:, :120].max() == 0 and diff[:, 330:].max() == 0 and diff[260:].max() == 0  # far from the face
    assert diff[90:150, 200:250].mean() > 5  # the face itself was restored (random weights: changed)
    assert len(list((tmp_path / "out" / "_faces").glob("astro_00_*.png"))) == 2
    # a second run skips what is done; --overwrite redoes it
    code, out, _ = cli("restore", src, "-o", tmp_path / "out", "--model-root", tiny_root, *FAST)
    assert code == 0 and "skipped  │      1" in out.replace("│ ", "│ ").replace("  ", "  ")


def test_batch_with_bad_inputs_keeps_going(tiny_root, astronaut, tmp_path, cli):
    inp = tmp_path / "in"
    _write(inp / "good.jpg", astronaut)
    _write(inp / "sub" / "gray.png", cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY))
    _write(inp / "noface.png", np.full((200, 200, 3), 127, np.uint8))
    (inp / "empty.jpg").write_bytes(b"")
    (inp / "text.jpg").write_text("not an image")
    (inp / "trunc.jpg").write_bytes((inp / "good.jpg").read_bytes()[:2000])
    _write(inp / "badyaml.png", astronaut)
    (inp / "badyaml.yaml").write_text("prompt: [unclosed\n")
    _write(inp / "noref.png", astronaut)
    (inp / "noref.yaml").write_text("refs: [missing.jpg]\n")
    _write(inp / "refnoface.png", astronaut)
    (inp / "refnoface.yaml").write_text("refs: [noface.png]\n")
    _write(inp / "refjunk.png", astronaut)
    (inp / "refjunk.yaml").write_text("refs: [text.jpg]\n")
    snapshot = {p: p.read_bytes() for p in inp.rglob("*") if p.is_file()}
    code, out, err = cli("restore", inp, "-o", tmp_path / "out", "--recursive", "--model-root", tiny_root, *FAST)
    assert code == 1
    assert (tmp_path / "out" / "good.jpg").is_file()
    gray = read_image(tmp_path / "out" / "sub" / "gray.png").pixels
    assert gray.ndim == 2  # grayscale stays grayscale, in the mirrored sub-folder
    text = " ".join(out.split())
    for expected in ["empty file", "not a readable image", "truncated or corrupt", "malformed YAML",
                     "missing.jpg: not found", "no face detected", "reference"]:
        assert expected in text, expected
    rows = {Path(r["source"]).name: r for r in json.loads((tmp_path / "out" / "mgfr-summary.json").read_text())}
    assert rows["refjunk.png"]["detail"] == f"reference {inp / 'text.jpg'}: not a readable image"  # named as such
    assert {p: p.read_bytes() for p in inp.rglob("*") if p.is_file()} == snapshot  # inputs untouched
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".") or p.suffix in (".tmp", ".part")]
    assert leftovers == []


def test_a_folder_without_a_photo_is_said_and_its_subfolders_counted(tiny_root, astronaut, tmp_path, cli):
    """A folder whose photos are all in subfolders, given without --recursive, or an empty one, restored nothing and
    said nothing (exit 0), where a pattern that matched nothing failed in one line."""
    _write(tmp_path / "trip" / "day1" / "a.jpg", astronaut)
    _write(tmp_path / "trip" / "day2" / "b.jpg", astronaut)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mgfr.yaml").write_text("prompt: brown eyes\n")  # a companion only
    code, out, _ = cli("restore", tmp_path / "trip", tmp_path / "empty", tmp_path / "notes", "-o", tmp_path / "out",
                       "--model-root", tiny_root, *FAST)
    text = " ".join(out.split())
    assert code == 1 and "no photo or clip in this folder; 2 in its subfolders (add --recursive)" in text, out
    assert text.count("no photo or clip in this folder") == 3
    code, out, _ = cli("restore", tmp_path / "trip", "-o", tmp_path / "out", "-r", "--model-root", tiny_root, *FAST)
    assert code == 0 and (tmp_path / "out" / "day2" / "b.jpg").is_file()


def test_rgba_and_16bit_keep_their_form(tiny_root, astronaut, tmp_path, cli):
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 200, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    cv2.imwrite(str(tmp_path / "d.png"), (astronaut[..., ::-1].astype(np.uint16) * 257))
    code, out, err = cli("restore", tmp_path / "a.png", tmp_path / "d.png", "-o", tmp_path / "out",
                         "--model-root", tiny_root, *FAST)
    assert code == 0, out + err
    a = read_image(tmp_path / "out" / "a.png").pixels
    assert a.shape[2] == 4 and (a[..., 3] == 200).all()
    assert read_image(tmp_path / "out" / "d.png").pixels.dtype == np.uint16


def test_missing_weights_one_message_naming_each_file(tmp_path, cli, astronaut):
    src = _write(tmp_path / "a.png", astronaut)
    code, out, err = cli("restore", src, "-o", tmp_path / "out", "--model-root", tmp_path / "empty", "--device", "cpu")
    assert code == 1
    line = " ".join(err.split())
    assert line.startswith("error: missing weights:")
    for name in ("detection_Resnet50_Final.pth", "mgfr weights fetch retinaface_resnet50", "sd21-base",
                 "v2.pth", "mgfr weights fetch diffbir-v2", "face_swinir_v1.ckpt", "offline"):
        assert name in line
    assert "\n" not in err.strip()
    assert not (tmp_path / "out").exists()


def test_an_option_given_twice_with_other_values_is_said(cli, tmp_path):
    """The command line keeps the last value of an option (click's rule); the first is named, not dropped unsaid.
    Repeatable options, the same value twice and an option's value that looks like an option are not noted."""
    import typer

    from mgfr_cli.app.options import repeated_options
    from mgfr_cli.cli import app

    argv = ["restore", "a.jpg", "-o", "x", "-ox", "--prompt", "brown eyes", "--prompt=beard", "--ref", "r1",
            "--ref", "r2", "--report", "--no-report", "--overwrite", "--overwrite", "--negative-prompt", "--seed",
            "--seed", "3", "--", "--steps", "--steps"]
    assert repeated_options(typer.main.get_command(app), argv) == [
        "--prompt given 2 times ('brown eyes', 'beard'): the last, 'beard', is used",
        "--report given 2 times (--report, --no-report): the last, --no-report, is used"]
    code, _, err = cli("weights", "path", "nothing", "--model-root", tmp_path / "a", "--model-root", tmp_path / "b")
    assert code == 1 and f"note: --model-root given 2 times ('{tmp_path / 'a'}', '{tmp_path / 'b'}')" in " ".join(
        err.split())


def test_usage_errors_exit_2(cli, tmp_path):
    code, _, err = cli("restore", tmp_path, "-o", tmp_path / "o", "--largest-face", "--face-index", "1")
    assert code == 2 and "choose at most one" in err
    code, _, _ = cli("restore", tmp_path, "-o", tmp_path / "o", "--steps", "0")
    assert code == 2


def test_a_bad_ref_flag_stops_the_run_before_any_photo(cli, tmp_path, astronaut):
    """`--ref` naming a missing file, a clip or a file that is no image would fail every photo of the batch, one by
    one, after each was read and its faces found: the run stops at once with one line, nothing written."""
    _write(tmp_path / "in" / "a.png", astronaut)
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    (tmp_path / "notes.jpg").write_text("not an image")
    for ref, said in (("missing.jpg", "--ref {}: not found"), ("clip.mp4", "reference {}: a clip, not a photo"),
                      ("notes.jpg", "reference {}: not a readable image")):
        code, out, err = cli("restore", tmp_path / "in", "-o", tmp_path / "o", "--ref", tmp_path / ref,
                             "--model-root", tmp_path / "no-weights", "--offline")
        assert code == 1 and said.format(tmp_path / ref) in " ".join(err.split()), out + err
        assert not (tmp_path / "o").exists()


def test_align_writes_crops_and_tables(detector_root, group_photo, astronaut, tmp_path, cli):
    _write(tmp_path / "in" / "group.jpg", group_photo)
    _write(tmp_path / "in" / "astro.jpg", astronaut)
    code, out, err = cli("align", tmp_path / "in", "-o", tmp_path / "out", "--model-root", detector_root,
                         "--detector", "retinaface_mobile0.25", "--face-size", "256", "--device", "cpu")
    assert code == 0, out + err
    rows = json.loads((tmp_path / "out" / "faces.json").read_text())
    assert sum(r["source"].endswith("group.jpg") for r in rows) >= 5
    assert (tmp_path / "out" / "faces.csv").read_text().count("\n") == len(rows) + 1
    crop = read_image(tmp_path / "out" / "astro_00.png").pixels
    assert crop.shape == (256, 256, 3)


def test_upscale_and_has_aligned(tiny_root, astronaut, helper, tmp_path, cli):
    src = _write(tmp_path / "a.png", astronaut)
    code, out, err = cli("restore", src, "-o", tmp_path / "up", "--model-root", tiny_root, "--upscale", "2", *FAST)
    assert code == 0, err
    assert read_image(tmp_path / "up" / "a.png").pixels.shape == (1024, 1024, 3)
    crop = helper.detect_and_align(astronaut)[0].crop
    aligned = _write(tmp_path / "crop.png", crop[::2, ::2])  # an aligned face at 256
    code, out, err = cli("restore", aligned, "-o", tmp_path / "al", "--has-aligned", "--model-root", tiny_root, *FAST)
    assert code == 0, err
    result = read_image(tmp_path / "al" / "crop.png").pixels
    assert result.shape == (256, 256, 3) and np.abs(result.astype(int) - crop[::2, ::2]).mean() > 1


def test_an_aligned_face_honours_upscale_and_names_the_flags_it_cannot_use(tiny_root, helper, astronaut, tmp_path,
                                                                           cli):
    """`--has-aligned --upscale 2`: the output is the input's size times 2 (it was the input's size, the flag
    dropped), alpha kept; detection flags are said once, not silently dropped; Real-ESRGAN is never loaded."""
    crop = helper.detect_and_align(astronaut)[0].crop[::2, ::2]  # an aligned face at 256
    rgba = np.concatenate([crop, np.full(crop.shape[:2] + (1,), 200, np.uint8)], axis=2)
    src = tmp_path / "in" / "face.png"
    src.parent.mkdir()
    assert cv2.imwrite(str(src), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    code, out, err = cli("restore", src, "-o", tmp_path / "out", "--has-aligned", "--upscale", "2", "--largest-face",
                         "--bg-upsampler", "realesrgan-x4", "--save-faces", "--model-root", tiny_root, *FAST)
    assert code == 0, out + err  # the tiny root has no Real-ESRGAN and runs offline: loading it would have failed
    said = " ".join(err.split())
    assert said.count("not used with --has-aligned") == 1, said
    for flag in ("--detector", "--largest-face", "--bg-upsampler"):
        assert flag in said.split("not used with --has-aligned")[0].rsplit("note:", 1)[-1], said
    written = read_image(tmp_path / "out" / "face.png").pixels
    assert written.shape == (512, 512, 4) and (written[:, :, 3] == 200).all()
    restored = read_image(tmp_path / "out" / "_faces" / "face_00_restored.png").pixels  # at the input's size
    assert restored.shape == (256, 256, 3) and np.array_equal(written[:, :, :3], resize_face(restored, (512, 512)))
    code, out, err = cli("restore", src, "-o", tmp_path / "out3", "--has-aligned", "--upscale", "3",
                         "--model-root", tiny_root, "--steps", "2", "--device", "cpu")
    assert code == 0 and "not used" not in err, err  # nothing given that it cannot use: nothing said
    assert read_image(tmp_path / "out3" / "face.png").pixels.shape == (768, 768, 4)
