"""A full disk (or a read-only folder) met while writing: one line, never a traceback, whatever was being written
(an output, the review page's images, a degraded copy, the summary); what was finished is kept and recorded, so the
same command resumes in place once there is room. The disk is made full where mgfr writes (ENOSPC from the write)."""

import errno
import os
from pathlib import Path

import cv2
import numpy as np
import pytest


def _full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _site(tmp_path, astronaut, n=3) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    for i in range(1, n + 1):
        cv2.imwrite(str(site / f"p{i}.png"), np.ascontiguousarray(astronaut[:256, 100:356, ::-1]))
    return site


def _restore(cli, tiny_root, site, *extra):
    return cli("restore", site, "-o", site, "--suffix", "_r", "--model-root", tiny_root, "--steps", "1",
               "--detector", "retinaface_mobile0.25", "--device", "cpu", *extra)


def test_a_full_disk_mid_batch_stops_in_one_line_and_the_same_command_resumes_in_place(tiny_root, astronaut,
                                                                                        tmp_path, cli, monkeypatch):
    """p2's output meets a full disk in the batch p1 was restored in: one line, and p1's output is recorded before
    p2 is written, so the rerun (in place) skips it, never taking p1_r.png for a photo of the user's."""
    import mgfr_cli.app.batch as batch

    site = _site(tmp_path, astronaut)
    real = batch.write_image

    def write(path, *args, **kwargs):
        if Path(path).name == "p2_r.png":
            _full()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(batch, "write_image", write)
    code, _, err = _restore(cli, tiny_root, site)
    assert code == 1 and "Traceback" not in err
    assert f"error: {site}: cannot write outputs (No space left on device); stopped" in " ".join(err.split())
    assert (site / "p1_r.png").is_file() and not (site / "p2_r.png").exists()
    monkeypatch.setattr(batch, "write_image", real)  # room again
    code, out, err = _restore(cli, tiny_root, site)
    assert code == 0, err
    assert sorted(p.name for p in site.glob("*.png")) == ["p1.png", "p1_r.png", "p2.png", "p2_r.png", "p3.png",
                                                          "p3_r.png"]
    assert "│ restored │      2 │" in out and "│ skipped  │      1 │" in out, out


def test_the_review_page_meeting_a_full_disk_never_stops_the_restoration(tiny_root, astronaut, tmp_path, cli,
                                                                        monkeypatch):
    """The page's images of p2 cannot be written: every photo is restored all the same, the end of the run says
    the page stopped at p2, and the page on disk names no image that is not there (p2's written ones removed)."""
    import mgfr_cli.app.report as report

    site = _site(tmp_path, astronaut)
    real, calls = report._jpeg, []

    def jpeg(path, *args):
        calls.append(path)
        if len(calls) == 6:  # p2's after.jpg: its before.jpg is written
            _full()
        return real(path, *args)

    monkeypatch.setattr(report, "_jpeg", jpeg)
    code, out, err = _restore(cli, tiny_root, site, "--report", "--batch-size", "1")
    err = " ".join(err.split())
    assert code == 0 and "│ restored │      3 │" in out, err
    assert "note: review page: stopped at p2.png (No space left on device): the photos from it on are restored" in err
    page = (site / "index.html").read_text()
    images = [m.split("'")[0] for m in page.split("src='")[1:]]
    assert len(images) == 4 and all((site / i).is_file() for i in images)  # p1's: before, after, its face's two
    assert sorted(p.name for p in (site / "_report").glob("*.jpg")) == sorted(Path(i).name for i in images)
    monkeypatch.setattr(report, "_jpeg", real)
    # the page itself cannot be written: the run goes on, and the page of the run before stays whole
    write = report.atomic_write_bytes
    monkeypatch.setattr(report, "atomic_write_bytes", lambda path, data: _full() if path.name == "index.html"
                        else write(path, data))
    code, out, err = _restore(cli, tiny_root, site, "--report", "--overwrite")
    assert code == 0 and "│ restored │      3 │" in out and "note: review page: stopped at" in " ".join(err.split())
    assert (site / "index.html").read_text() == page
    # written after p1, then not before the end (spaced): the stop names p2, the first photo the page lacks
    monkeypatch.setattr(report.Report, "SPACING", 1e9)
    pages = []
    monkeypatch.setattr(report, "atomic_write_bytes", lambda path, data: _full() if path.name == "index.html" and (
        pages.append(path) or len(pages) > 1) else write(path, data))
    code, out, err = _restore(cli, tiny_root, site, "--report", "--overwrite", "--batch-size", "1")
    assert code == 0 and "note: review page: stopped at p2.png (No space left" in " ".join(err.split()), err


def test_degrade_stops_in_one_line_with_the_copies_made_listed(tmp_path, astronaut, cli, monkeypatch):
    """A full disk at the second copy: one line naming the folder, params.json lists the first; a name the folder
    refuses (not a full disk) fails that file alone."""
    import json

    import mgfr_cli.faces.io as io

    site = _site(tmp_path, astronaut)
    real = io.write_image

    def write(path, *args, **kwargs):
        if Path(path).name == "p2.png":
            _full()
        if Path(path).name == "p3.png":
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io, "write_image", write)
    code, _, err = cli("degrade", site, "-o", tmp_path / "lq")
    assert code == 1 and "Traceback" not in err
    assert f"error: {tmp_path / 'lq'}: cannot write (No space left on device); stopped after 1 copies" in \
        " ".join(err.split())
    assert list(json.loads((tmp_path / "lq" / "params.json").read_text())) == ["p1.png"]
    (site / "p2.png").unlink()
    code, out, err = cli("degrade", site, "-o", tmp_path / "lq")
    assert code == 1 and f"cannot write {tmp_path / 'lq' / 'p3.png'}: File name too long" in " ".join(out.split())
    assert sorted(json.loads((tmp_path / "lq" / "params.json").read_text())) == ["p1.png"]


def test_a_full_disk_anywhere_else_is_one_line_and_other_errors_keep_their_traceback(tiny_root, astronaut, tmp_path,
                                                                                      cli, monkeypatch):
    """The summary written at the end of a run meets a full disk: one line (the outputs are written, and the
    journal beside it keeps them for the next run); an error that is not the disk's or the folder's keeps its
    traceback, as does a full disk under MGFR_DEBUG=1."""
    import tempfile

    site = _site(tmp_path, astronaut, n=1)
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # the summary's temporary file: the disk fails it, naming no file (as write() does)
        if kwargs.get("prefix", "").startswith(".mgfr-summary.json"):
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    code, _, err = _restore(cli, tiny_root, site)
    assert code == 1 and "Traceback" not in err
    assert " ".join(err.split()).endswith(f"error: {site / 'mgfr-summary.json'}: No space left on device; stopped, "
                                          "finished files are kept")
    assert (site / "p1_r.png").is_file() and (site / ".mgfr-summary.json.journal").is_file()
    monkeypatch.setenv("MGFR_DEBUG", "1")
    with pytest.raises(OSError, match="No space left"):
        _restore(cli, tiny_root, site, "--overwrite")
    monkeypatch.delenv("MGFR_DEBUG")
    failure = OSError(errno.EIO, os.strerror(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        _restore(cli, tiny_root, site, "--overwrite")


def test_a_reference_library_whose_cache_meets_a_full_disk_is_used_all_the_same(helper, group_photo, tmp_path,
                                                                                 monkeypatch):
    """Its faces found and embedded (minutes for a large library) are searched for this run; the cache not saved is
    said, and the next refresh embeds again (a half-written cache is never read)."""
    import mgfr_cli.faces.reference_library as rl
    from test_reference_library import CountingEmbed

    lib = tmp_path / "lib"
    lib.mkdir()
    cv2.imwrite(str(lib / "group.png"), group_photo)
    write, calls = rl.atomic_write_bytes, []

    def second_fails(path, data):  # the embeddings written, then the disk is full: the index is not
        calls.append(path)
        return _full() if len(calls) == 2 else write(path, data)

    monkeypatch.setattr(rl, "atomic_write_bytes", second_fails)
    library = rl.ReferenceLibrary(lib, helper, CountingEmbed(), tmp_path / "x")
    update = library.refresh()
    assert update.unsaved == "No space left on device" and library.update is update
    assert update.embedded == len(library.rows) >= 5
    assert library.search(library.matrix[3], 1, 0.5)[0].face == library.rows[3][1]
    monkeypatch.setattr(rl, "atomic_write_bytes", write)
    embed = CountingEmbed()
    again = rl.ReferenceLibrary(lib, helper, embed, tmp_path / "x")
    assert again.refresh().embedded == embed.faces == len(library.rows) and not again.update.unsaved


def test_align_fails_a_photo_whose_crop_the_folder_refuses_and_goes_on(helper, astronaut, tmp_path, cli,
                                                                        detector_root, monkeypatch):
    """A crop the folder refuses (not a full disk: a name too long, an I/O error) fails that photo alone; a full
    disk stops the run in one line, the crops written listed."""
    import json

    import mgfr_cli.faces.align as align

    site = _site(tmp_path, astronaut)
    real = align.write_image

    def write(path, *args, **kwargs):
        if Path(path).name == "p2_00.png":
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))
        if Path(path).name == "p3_00.png" and full:
            _full()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(align, "write_image", write)
    full = False
    args = ("align", site, "-o", tmp_path / "al", "--model-root", detector_root, "--detector", "retinaface_mobile0.25",
            "--device", "cpu")
    code, out, err = cli(*args)
    assert code == 1 and "cannot write its crops: File name too long" in " ".join(out.split()), out + err
    assert sorted(p.name for p in (tmp_path / "al").glob("*.png")) == ["p1_00.png", "p3_00.png"]
    full = True
    code, out, err = cli(*args)  # p3's crop again (mgfr's own), into a full disk: the old one stays, still listed
    assert code == 1 and "Traceback" not in err
    assert f"error: {tmp_path / 'al'}: cannot write (No space left on device); stopped after 1 crop(s)" in \
        " ".join(err.split())
    rows = json.loads((tmp_path / "al" / "faces.json").read_text())
    assert sorted(Path(r["crop"]).name for r in rows) == ["p1_00.png", "p3_00.png"]


def _safetensors_full(*_args, **_kwargs):  # what safetensors raises when the disk fills under it
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_a_full_disk_under_safetensors_is_the_oserror_it_is(tmp_path):
    """safetensors reports a full disk as its own error type: taken as the OSError (one line from the CLI); its other
    errors, and other errors that merely mention an os error, are raised as they are."""
    from safetensors import SafetensorError

    from mgfr_cli.files import disk_errors

    with pytest.raises(OSError) as caught, disk_errors(tmp_path / "w.safetensors"):
        _safetensors_full()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "w.safetensors")
    for exc in (SafetensorError("invalid header"), ValueError("(os error 28)")):
        with pytest.raises(type(exc), match=str(exc).replace("(", r"\(").replace(")", r"\)")), disk_errors(tmp_path):
            raise exc


def test_weights_convert_and_trainings_caches_meet_a_full_disk_in_one_line(tmp_path, cli, monkeypatch):
    """`weights convert` into a full disk: one line, no hidden folder left (it was a traceback); a training cache:
    its partial file removed."""
    import torch
    from safetensors.torch import load_file

    import safetensors.torch
    from mgfr_cli.model.adapter import MgfrAdapter
    from mgfr_cli.training.caches import _save

    fixtures = Path(__file__).resolve().parent / "fixtures"
    state = {k[len("diffbir."):]: v for k, v in load_file(fixtures / "diffbir" / "diffbir_tiny_golden.safetensors").items()
             if k.startswith("diffbir.")}
    torch.save(state, tmp_path / "v2.pth")
    monkeypatch.setattr(MgfrAdapter, "save_pretrained", _safetensors_full)
    out = tmp_path / "out" / "lca"
    code, _, err = cli("weights", "convert", "diffbir", tmp_path / "v2.pth", "-o", out, "--base",
                       fixtures / "diffbir_e2e" / "tiny_models" / "sd21-base")
    assert code == 1 and "Traceback" not in err, err
    assert f"error: {out}: No space left on device; stopped" in " ".join(err.split())
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []

    real = safetensors.torch.save_file

    def partial(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 100)  # what was written before the disk filled
        _safetensors_full()

    monkeypatch.setattr(safetensors.torch, "save_file", partial)
    with pytest.raises(OSError, match="No space left"):
        _save({"x": torch.zeros(3)}, tmp_path / "cache.safetensors")
    assert list(tmp_path.glob("cache*")) == []
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    _save({"x": torch.zeros(3)}, tmp_path / "cache.safetensors")
    assert load_file(tmp_path / "cache.safetensors")["x"].shape == (3,)


def test_the_trained_adapter_meets_a_full_disk_as_the_oserror_it_is(tmp_path, monkeypatch):
    """The EMA adapter written at the end of a run (and in each checkpoint) into a full disk: the OSError the CLI says
    in one line, and no hidden folder left beside it."""
    from diffusers.training_utils import EMAModel

    from helpers import tiny_adapter, tiny_base
    from mgfr_cli.model.adapter import MgfrAdapter
    from mgfr_cli.training.checkpoints import save_ema_adapter

    adapter = tiny_adapter(tiny_base())
    monkeypatch.setattr(MgfrAdapter, "save_pretrained", _safetensors_full)
    with pytest.raises(OSError, match="No space left") as caught:
        save_ema_adapter(adapter, EMAModel(adapter.parameters()), tmp_path / "adapter")
    assert caught.value.filename == str(tmp_path / "adapter") and list(tmp_path.iterdir()) == []


def test_a_page_folder_left_by_a_run_stopped_at_its_first_entry_is_taken_back(tiny_root, astronaut, tmp_path, cli):
    """A run stopped (Ctrl-C, SIGTERM, a full disk) while writing its first page entry leaves `_report/` with an image
    and a temporary file, and no entries.json yet: the next run took it for the user's folder (its page went to
    `_report-mgfr-2`, the temporary file stayed). It is mgfr's: taken back and cleaned. A user's file there still
    keeps it the user's."""
    site = _site(tmp_path, astronaut, n=2)
    left = site / "_report"
    left.mkdir()
    (left / "0123456789ab_before.jpg").write_bytes(b"\xff\xd8")
    (left / ".0123456789ab_after.jpg.k3j2h1g0.tmp").write_bytes(b"\xff")
    code, out, err = _restore(cli, tiny_root, site, "--report")
    assert code == 0, out + err
    assert (left / "entries.json").is_file() and not (site / "_report-mgfr-2").exists()
    assert not list(left.glob(".*.tmp"))
    from mgfr_cli.app.report import PAGE_FILE

    written = [p.name for p in left.iterdir()]  # every name the page makes is one it knows as its own
    assert any(n.endswith("_00_r.jpg") for n in written) and all(PAGE_FILE.fullmatch(n) for n in written), written
    (left / "holiday.jpg").write_bytes(b"\xff\xd8")
    (left / "entries.json").unlink()
    code, out, err = _restore(cli, tiny_root, site, "--report", "--overwrite")
    assert code == 0 and (site / "_report-mgfr-2" / "entries.json").is_file() and (left / "holiday.jpg").is_file()
