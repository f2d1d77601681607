import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import MOBILENET  # noqa: E402

# No test reaches the internet: restore never downloads here unless a test points it at a loopback server.
os.environ["MGFR_OFFLINE"] = "1"


def pytest_configure(config):
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


@pytest.fixture(scope="session")
def detector_root(tmp_path_factory) -> Path:
    """A model root holding the real RetinaFace mobilenet0.25 weights (tests/fixtures)."""
    root = tmp_path_factory.mktemp("root")
    shutil.copy(MOBILENET, root / MOBILENET.name)
    return root


@pytest.fixture(scope="session")
def helper(detector_root):
    from mgfr_cli.faces.helper import FaceHelper

    return FaceHelper(detector_root, "retinaface_mobile0.25")


@pytest.fixture(scope="session")
def tiny_root(detector_root, tmp_path_factory) -> Path:
    """A model root with the detector, a tiny random SD base and an untrained tiny adapter."""
    from helpers import tiny_adapter, tiny_base

    root = tmp_path_factory.mktemp("tinyroot")
    shutil.copy(detector_root / MOBILENET.name, root / MOBILENET.name)
    base = tiny_base()
    base.save(root / "sd21-base")
    tiny_adapter(base).save_pretrained(root / "mgfr-adapter")
    return root


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def group_photo() -> np.ndarray:
    import cv2
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return cv2.imread(str(path))[:, :, ::-1].copy()


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``mgfr ARGS`` in this process; returns (exit code, stdout, stderr)."""
    from mgfr_cli.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # rich tables on one line each, so tests can read them

    def run(*args):
        old = sys.argv
        sys.argv = ["mgfr", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = old
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
