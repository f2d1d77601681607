"""Options shared by several commands (defined once), the one place that resolves --device, and the notes that
name flags a run cannot use (before it: :func:`unused_flags`; after it: :func:`unused_after`), never dropped silently.

Standard library, typer and rich only at the top: importing this stays instant.
"""

from __future__ import annotations

import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mgfr_cli.errors import ConfigError, MgfrError


def finite(value):
    """Typer callback: a float option must be a finite number (``nan`` passes min/max checks)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Detector(str, Enum):
    resnet50 = "retinaface_resnet50"
    mobile = "retinaface_mobile0.25"


# -- options shared by several commands (defined once) -------------------------------------------
DeviceOpt = Annotated[Device, typer.Option(help="Where to run: auto picks cuda when present (fp16 there, fp32 on cpu).")]
ModelRootOpt = Annotated[Optional[Path], typer.Option(
    "--model-root", file_okay=False, help="Folder of weight files [default: $MGFR_HOME, else the repo's weights/].")]
DetectorOpt = Annotated[Detector, typer.Option(help="Face detector (facexlib RetinaFace).")]
OnlyCenterOpt = Annotated[bool, typer.Option("--only-center-face", help="Keep only the face nearest the centre.")]
LargestOpt = Annotated[bool, typer.Option("--largest-face", help="Keep only the largest face.")]
FaceIndexOpt = Annotated[Optional[int], typer.Option("--face-index", min=0, help="Keep only face K (0 = leftmost).")]
MinFaceOpt = Annotated[float, typer.Option("--min-face-size", min=0, callback=finite, help="Ignore faces whose eye distance is below PX.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders of folder inputs.")]
RefLibraryOpt = Annotated[Optional[Path], typer.Option("--ref-library", exists=True, file_okay=False, help="A folder of photos of the people in your photos (any layout): each face restored gets the library's best matches as references (--ref and sidecars win).")]
RefKOpt = Annotated[int, typer.Option("--ref-k", min=1, max=32, help="References taken from --ref-library per face.")]
RefThresholdOpt = Annotated[float, typer.Option("--ref-threshold", callback=finite, min=-1, max=1, help="Least identity similarity (cosine) for a library face to be taken.")]
MaxMpOpt = Annotated[float, typer.Option("--max-megapixels", min=0.01, max=100000, callback=finite, help="Refuse larger images (decompression-bomb guard).")]


def check_refs(refs, max_megapixels: float) -> None:
    """``--ref``: each must exist; a file must be a photo mgfr reads (it would fail every photo it is given for)."""
    from mgfr_cli.faces.conditions import read_reference

    from mgfr_cli.files import why_missing

    for r in refs:
        if not r.exists():
            raise MgfrError(f"--ref {r}: {why_missing(r)}")
        if r.is_file():
            read_reference(r, max_megapixels)


def show_version(value: bool) -> None:
    """``mgfr --version``: mgfr's version, with torch's and diffusers' as installed (read without importing them)."""
    if not value:
        return
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from mgfr_cli import __version__

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    typer.echo(f"mgfr {__version__} (torch {of('torch')}, diffusers {of('diffusers')}, Python {platform.python_version()})")
    raise typer.Exit()


def quiet_libraries() -> None:
    """diffusers and transformers print progress bars and notices per model load; the CLI has its own."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def resolve_device(device: Device, precision: str = "auto"):
    """The one place that turns --device/--precision into a torch device and dtype (auto: fp16 on CUDA,
    fp32 on CPU). Under ``accelerate launch``/``torchrun`` each process takes the GPU of its LOCAL_RANK."""
    import torch

    if device == Device.auto:
        device = Device.cuda if torch.cuda.is_available() else Device.cpu
    if device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use --device cpu)")
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if precision not in ("auto", *dtypes):
        raise typer.BadParameter("--precision must be auto, fp16, bf16 or fp32")
    if device == Device.cuda:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}", dtypes.get(precision, torch.float16)
    return "cpu", dtypes.get(precision, torch.float32)


def check_outputs(output: Path, video_noise: str, ext: str, suffix: str) -> None:
    """``restore``'s output options, refused before anything loads."""
    from mgfr_cli.files import not_a_file

    not_a_file(output)
    if video_noise not in ("track", "frame"):
        raise typer.BadParameter("--video-noise must be track or frame")
    if ext not in ("auto", "png", "jpg"):
        raise typer.BadParameter("--ext must be auto, png or jpg")
    if any(c in suffix for c in "/\\\0") or ".." in suffix:
        raise typer.BadParameter("--suffix must be plain text (no /, \\ or ..): outputs stay inside -o")


def selection(only_center, largest, face_index, min_face_size):
    from mgfr_cli.faces.helper import FaceSelection

    if sum([only_center, largest, face_index is not None]) > 1:
        raise typer.BadParameter("choose at most one of --only-center-face, --largest-face, --face-index")
    return FaceSelection(only_center_face=only_center, largest_face=largest, face_index=face_index,
                         min_face_size=min_face_size)


def given(ctx: typer.Context, names) -> list[str]:
    """Of the options ``names``, those the user set (on the command line or through the environment), spelled as
    the command line spells them: what a note about flags that do not apply must name."""
    params = {p.name: p for p in ctx.command.params}  # sources by name: typer may carry its own click
    return [params[n].opts[0] for n in names
            if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")]


NOT_FOR_ALIGNED = ("detector", "only_center_face", "largest_face", "face_index", "min_face_size", "bg_upsampler",
                   "face_upsample")


def unused_flags(ctx: typer.Context, *, has_aligned: bool = False, library: bool = False,
                 aligned_data: bool = False, refs: bool = False) -> list[str]:
    """Notes, said once before any work, naming the flags given that this run cannot use (never dropped silently).
    ``aligned_data``: `mgfr train` without --align (nothing is detected); ``refs``: --ref given (it wins for every
    face, so a library is never asked)."""
    lines = []
    if refs and library:
        lines.append(f"{', '.join(given(ctx, ('ref_library', 'ref_k', 'ref_threshold')))}: not used with --ref (it "
                     f"gives every face its references; a library serves faces that have none)")
    if aligned_data and (names := given(ctx, ("detector",))):
        lines.append(f"{', '.join(names)}: not used without --align (the data are taken as aligned faces)")
    if has_aligned and (names := given(ctx, NOT_FOR_ALIGNED)):
        lines.append(f"{', '.join(names)}: not used with --has-aligned (each input is one aligned face: nothing is "
                     f"detected, and it is resized by --upscale, not upsampled)")
    if not library and (names := given(ctx, ("ref_k", "ref_threshold"))):
        lines.append(f"{', '.join(names)}: not used without --ref-library")
    return lines


def unused_after(ctx: typer.Context, restorer) -> list[str]:
    """After a run: the flags given that no face turned out to use (``restorer``: the run's DiffusionRestorer), and
    the words of a prompt (a flag's or a sidecar's) past what the text encoder reads."""
    from mgfr_cli.model.prompts import cut_notes

    lines, idle = cut_notes(restorer), restorer.idle()
    if given(ctx, ("identity_guidance",)) and "identity_guidance" in idle:
        lines.append(f"--identity-guidance: not used ({idle['identity_guidance']}" + (
            ": give --ref, --ref-library or a sidecar's refs)" if not restorer.referenced else ")"))
    if given(ctx, ("guidance_attribute",)) and "guidance_attribute" in idle:
        lines.append("--guidance-attribute: not used (it steers away from a negative prompt, and no face had one: "
                     "give --negative-prompt or a sidecar's negative_prompt)")
    return lines


def shard() -> tuple[int, int]:
    """This process's share of the inputs under ``accelerate launch``/``torchrun`` (RANK, WORLD_SIZE).

    Only under a real launcher (it sets MASTER_ADDR and LOCAL_RANK as well): a WORLD_SIZE left in the
    environment by an earlier job must not make a plain run do half the photos and wait for a partner."""
    env = os.environ
    try:
        rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1
    if world <= 1 or not (env.get("MASTER_ADDR") and env.get("LOCAL_RANK")) or not 0 <= rank < world:
        return 0, 1
    print(f"mgfr: process {rank} of {world} (launcher detected): this process takes every {world}th photo",
          file=sys.stderr)
    return rank, world


def repeated_options(group, argv: list[str]) -> list[str]:
    """Notes for options that take one value and were given several different ones (``--prompt 'brown eyes'
    --prompt beard``): the command line keeps the last, as every click program does, and the others would be
    dropped without a word. Repeatable options (``--ref``) and a flag given twice the same way are not noted."""
    cmd, i = group, 0
    while hasattr(cmd, "commands"):  # a group (typer carries its own click): mgfr weights fetch ... to the command
        if i >= len(argv) or (cmd := cmd.commands.get(argv[i])) is None:
            return []
        i += 1
    opts = {o: p for p in cmd.params if p.param_type_name == "option" and not p.multiple
            for o in p.opts + p.secondary_opts}
    seen: dict[str, list] = {}
    tokens = argv[i:]
    k = 0
    while k < len(tokens):
        tok, value = tokens[k], None
        k += 1
        if tok == "--":
            break
        name = tok.split("=", 1)[0] if tok.startswith("--") else tok[:2] if tok.startswith("-") else None
        param = opts.get(name)
        if param is None:
            continue
        if param.is_flag:
            value = name in param.opts
        elif tok != name:  # --steps=20, -oout
            value = tok[len(name) + (tok[len(name):].startswith("=")):]
        elif k < len(tokens):
            value, k = tokens[k], k + 1
        seen.setdefault(param.opts[0], []).append((name, value))
    lines = []
    for opt, given_ in seen.items():
        if len({v for _, v in given_}) > 1:
            said = ", ".join(n if isinstance(v, bool) else repr(v) for n, v in given_)
            last = given_[-1][0] if isinstance(given_[-1][1], bool) else repr(given_[-1][1])
            lines.append(f"{opt} given {len(given_)} times ({said}): the last, {last}, is used")
    return lines
