"""The ``mgfr`` command line: small typed commands over the library.

Only the standard library, typer and rich are imported at the top, so ``mgfr --help`` answers at
once; torch, diffusers, OpenCV, facexlib and insightface load inside the commands that need them.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import ConfigError, MgfrError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="MGFR: multi-modal guided diffusion face restoration (prompts, references, identity).")
weights_app = typer.Typer(no_args_is_help=True, help="List, fetch and verify weight files (weights/manifest.yaml).")
app.add_typer(weights_app, name="weights")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


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
    "--model-root", help="Folder of weight files [default: $MGFR_HOME, else the repo's weights/].")]
DetectorOpt = Annotated[Detector, typer.Option(help="Face detector (facexlib RetinaFace).")]
OnlyCenterOpt = Annotated[bool, typer.Option("--only-center-face", help="Keep only the face nearest the centre.")]
LargestOpt = Annotated[bool, typer.Option("--largest-face", help="Keep only the largest face.")]
FaceIndexOpt = Annotated[Optional[int], typer.Option("--face-index", min=0, help="Keep only face K (0 = leftmost).")]
MinFaceOpt = Annotated[float, typer.Option("--min-face-size", min=0, help="Ignore faces whose eye distance is below PX.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders of folder inputs.")]
MaxMpOpt = Annotated[float, typer.Option("--max-megapixels", min=0.01, help="Refuse larger images (decompression-bomb guard).")]


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


def _selection(only_center, largest, face_index, min_face_size):
    from .faces import FaceSelection

    if sum([only_center, largest, face_index is not None]) > 1:
        raise typer.BadParameter("choose at most one of --only-center-face, --largest-face, --face-index")
    return FaceSelection(only_center_face=only_center, largest_face=largest, face_index=face_index,
                         min_face_size=min_face_size)


def _shard() -> tuple[int, int]:
    """This process's share of the inputs under ``accelerate launch``/``torchrun`` (RANK, WORLD_SIZE)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shown(path) -> str:
    """A path for the terminal: undecodable bytes of a file name (kept as surrogates) shown as U+FFFD."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _summary(outcomes, title: str, done: str = "restored") -> int:
    """Print the outcome counts and every photo not done with its reason; return the exit code."""
    from rich.table import Table

    from .batch import FAILED, NO_FACE, RESTORED, SKIPPED

    counts = {s: sum(o.status == s for o in outcomes) for s in (RESTORED, SKIPPED, NO_FACE, FAILED)}
    table = Table(title=title, show_lines=False)
    table.add_column("outcome")
    table.add_column("photos", justify="right")
    for status, n in counts.items():
        table.add_row(done if status == RESTORED else status, str(n))
    out.print(table)
    problems = [o for o in outcomes if o.status in (FAILED, NO_FACE)]
    if problems:
        detail = Table(title="not restored", show_lines=False)
        detail.add_column("file", overflow="fold")
        detail.add_column("outcome")
        detail.add_column("reason", overflow="fold")
        for o in problems:
            detail.add_row(shown(o.source), o.status, shown(o.detail))
        out.print(detail)
    return 1 if counts[FAILED] else 0


def _run_batch(job, helper, restorer, upsampler=None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .batch import BatchRestorer, merge_summaries, write_summary

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=False) as progress:
        task = progress.add_task("photos", total=None)

        def on_outcome(o):
            progress.update(task, advance=1, description=f"{o.status}: {shown(o.source.name)}")

        outcomes = BatchRestorer(helper, restorer, upsampler).run(job, on_outcome, lambda n: progress.update(task, total=n))
    rank, world = job.shard
    if world == 1:
        write_summary(job.output / "mgfr-summary.json", outcomes)
        return _summary(outcomes, "mgfr restore")
    # Several processes: each writes its share; the first merges them once all are there.
    write_summary(job.output / f"mgfr-summary-{rank}-of-{world}.json", outcomes)
    if rank != 0:
        return 1 if any(o.status == "failed" for o in outcomes) else 0
    merged, missing = merge_summaries(job.output, world)
    if missing:
        err.print(f"[yellow]summary without processes {missing} (they did not finish)[/yellow]", markup=True)
    return _summary(merged, f"mgfr restore ({world} processes)") or (1 if missing else 0)


@app.command()
def restore(
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder; the input tree is mirrored in it.")],
    ref: Annotated[Optional[list[Path]], typer.Option("--ref", help="Reference image or folder (repeatable).")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Attributes to keep, e.g. 'brown eyes, beard'.")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Attributes to avoid, e.g. 'eyeglasses'.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Adapter checkpoint or training run folder [default: MODEL_ROOT/mgfr-adapter, else the public DiffBIR prior MODEL_ROOT/diffbir-v2-lca].")] = None,
    base: Annotated[Optional[Path], typer.Option(help="Stable Diffusion base (diffusers folder or .safetensors) [default: MODEL_ROOT/sd21-base].")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Denoising steps [default: 30; 50 for a DiffBIR adapter].")] = None,
    scheduler: Annotated[str, typer.Option(help="dpmpp or ddim.")] = "dpmpp",
    guidance_quality: Annotated[Optional[float], typer.Option(help="Weight l_nq of the negative-quality direction [default: 4; 3 for a DiffBIR adapter, its scale s = 1 + l_nq].")] = None,
    guidance_attribute: Annotated[float, typer.Option(help="Weight l_na of the negative-attribute direction.")] = 2.0,
    color_fix: Annotated[str, typer.Option(help="Colour correction toward the input: wavelet, adain or none.")] = "wavelet",
    seed: Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Random seed (face K of a photo uses seed + K).")] = 0,
    start_from: Annotated[str, typer.Option(help="noise, or cond: start from the condition latent noised to the first step (DiffBIR's option).")] = "noise",
    cleaner: Annotated[str, typer.Option(help="Clean the face before encoding it: auto (swinir-codeformer for DiffBIR adapters, none otherwise), swinir-codeformer, swinir-face or none.")] = "auto",
    bg_upsampler: Annotated[str, typer.Option(help="Background upsampler when --upscale > 1: auto (realesrgan-x2 up to x2, realesrgan-x4 above), realesrgan-x2, realesrgan-x4 or none.")] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never download missing weights (also MGFR_OFFLINE=1 or HF_HUB_OFFLINE=1).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Faces per GPU batch (halved automatically on out-of-memory).")] = 8,
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile + CUDA graphs (slow first batch; batches padded to --batch-size).")] = False,
    upscale: Annotated[float, typer.Option(min=0.1, max=8, help="Resize the background by this factor.")] = 1.0,
    has_aligned: Annotated[bool, typer.Option("--has-aligned", help="Inputs are already aligned face crops.")] = False,
    save_faces: Annotated[bool, typer.Option("--save-faces", help="Also write aligned and restored crops to OUT/_faces.")] = False,
    suffix: Annotated[str, typer.Option(help="Added to output file names before the extension.")] = "",
    ext: Annotated[str, typer.Option(help="Output format: auto (keep the input's, png where it cannot hold the data), png, jpg.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo photos whose output exists.")] = False,
    recursive: RecursiveOpt = False,
    only_center_face: OnlyCenterOpt = False,
    largest_face: LargestOpt = False,
    face_index: FaceIndexOpt = None,
    min_face_size: MinFaceOpt = 0.0,
    detector: DetectorOpt = Detector.resnet50,
    device: DeviceOpt = Device.auto,
    model_root: ModelRootOpt = None,
    max_megapixels: MaxMpOpt = 100.0,
):
    """Restore every face in photos and paste them back (prompts, references and identity optional)."""
    from .batch import RestoreJob
    from .conditions import ConditionSpec
    from .identity import ARCFACE_FILE
    from .pipeline import DiffusionRestorer, RestoreSettings
    from .provision import offline_requested, plan_restore, provide, restore_components
    from .weights import load_manifest, resolve_root

    if ext not in ("auto", "png", "jpg"):
        raise typer.BadParameter("--ext must be auto, png or jpg")
    RestoreSettings(guidance_quality=guidance_quality or 0.0, guidance_attribute=guidance_attribute,
                    scheduler=scheduler, color_fix=color_fix, start_from=start_from).check()
    selection = _selection(only_center_face, largest_face, face_index, min_face_size)
    flags = ConditionSpec(prompt=prompt, negative_prompt=negative_prompt, refs=tuple(ref) if ref else None)
    for r in ref or ():
        if not r.exists():
            raise MgfrError(f"--ref {r}: not found")
    root = resolve_root(model_root)
    manifest = load_manifest()
    offline = offline_requested(offline)
    plan = plan_restore(root, manifest, detector=None if has_aligned else detector.value, base=base,
                        checkpoint=checkpoint, cleaner=cleaner, bg_upsampler=bg_upsampler, upscale=upscale,
                        offline=offline)
    provide(plan, manifest, offline=offline, announce=_announce_downloads, progress=_download_progress())
    for note in plan.notes:
        err.print(f"[yellow]note:[/yellow] {note}", markup=True)
    dev, dtype = resolve_device(device, precision)
    quiet_libraries()
    helper, pipeline, upsampler = restore_components(plan, device=dev, dtype=dtype, identity_file=root / ARCFACE_FILE)
    prof = pipeline.profile
    settings = RestoreSettings(steps=steps or prof.default_steps, scheduler=scheduler,
                               guidance_quality=prof.default_guidance if guidance_quality is None else guidance_quality,
                               guidance_attribute=guidance_attribute, color_fix=color_fix, seed=seed, start_from=start_from)
    job = RestoreJob(inputs=tuple(inputs), output=output, flags=flags, selection=selection, upscale=upscale,
                     has_aligned=has_aligned, save_faces=save_faces, suffix=suffix, ext=ext, overwrite=overwrite,
                     recursive=recursive, max_megapixels=max_megapixels, batch_size=batch_size, seed=seed,
                     shard=_shard())
    pipeline.optimize(compile=compile, channels_last=dev.startswith("cuda"))
    restorer = DiffusionRestorer(pipeline, settings, pad_to=batch_size if compile else 0)
    code = _run_batch(job, helper, restorer, upsampler)
    for what in sorted(restorer.ignored):
        err.print(f"[yellow]note:[/yellow] {what} given but not used: the adapter ({prof.source}) has no trained "
                  f"reference branch; references and identity need an MGFR adapter trained through stage 2", markup=True)
    raise typer.Exit(code)


def _announce_downloads(rows) -> None:
    from rich.table import Table

    table = Table(title="first run: downloading the public weights restore needs (once)")
    for col in ("entry", "size", "licence"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    err.print(table)


def _download_progress():
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    tasks, holder = {}, {}

    def on_bytes(path, done, total):
        if "p" not in holder:
            holder["p"] = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=err)
            holder["p"].start()
        p = holder["p"]
        if path not in tasks:
            tasks[path] = p.add_task(path, total=total)
        p.update(tasks[path], completed=done, total=total)
        if total is not None and done >= total:
            p.stop_task(tasks[path])
            if all(p.tasks[t].finished for t in tasks.values()):
                p.stop()
                holder.pop("p")
                tasks.clear()

    return on_bytes


@app.command()
def align(
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the aligned crops and faces.csv/json.")],
    face_size: Annotated[int, typer.Option(min=64, max=2048, help="Crop size (FFHQ template scaled to it).")] = 512,
    recursive: RecursiveOpt = False,
    only_center_face: OnlyCenterOpt = False,
    largest_face: LargestOpt = False,
    face_index: FaceIndexOpt = None,
    min_face_size: MinFaceOpt = 0.0,
    detector: DetectorOpt = Detector.resnet50,
    device: DeviceOpt = Device.auto,
    model_root: ModelRootOpt = None,
    max_megapixels: MaxMpOpt = 100.0,
):
    """Detect and align every face to FFHQ-style crops, with faces.csv and faces.json listing them."""
    from .align import align_inputs
    from .faces import FaceHelper
    from .weights import resolve_root

    selection = _selection(only_center_face, largest_face, face_index, min_face_size)
    dev, _ = resolve_device(device)
    helper = FaceHelper(resolve_root(model_root), detector.value, face_size=face_size, device=dev, use_parse=False)
    outcomes = align_inputs(helper, inputs, output, selection, recursive, max_megapixels)
    raise typer.Exit(_summary(outcomes, "mgfr align", done="aligned"))


@app.command()
def train(
    stage: Annotated[int, typer.Option(min=1, max=2, help="1: LQ branch with prompts; 2: reference/identity branch.")],
    data: Annotated[Path, typer.Option(help="Stage 1: folder of aligned HQ faces; stage 2: one folder per identity.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (checkpoints, logs, final adapter).")],
    base: Annotated[Optional[Path], typer.Option(help="Stable Diffusion base [default: MODEL_ROOT/sd21-base].")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Training config YAML (every knob); flags override it.")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Stage 1: an LCA to fine-tune (e.g. MODEL_ROOT/diffbir-v2-lca); stage 2: the stage-1 run folder or adapter to start from.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o from its latest checkpoint.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Per process.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option()] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="no, fp16 or bf16.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Architecture config in models/ (or a YAML path).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(min=1)] = None,
    num_workers: Annotated[Optional[int], typer.Option(min=0)] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    cache_latents: Annotated[Optional[bool], typer.Option("--cache-latents/--no-cache-latents", help="Encode every clean image with the VAE once, up front.")] = None,
    align: Annotated[bool, typer.Option("--align", help="Data is unaligned: align each image's largest face once, cached in RUN_DIR/aligned-data.")] = False,
    detector: DetectorOpt = Detector.resnet50,
    model_root: ModelRootOpt = None,
):
    """Train an MGFR adapter (multi-GPU: `accelerate launch -m mgfr_cli.cli train ...`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .identity import ARCFACE_FILE
    from .train import load_train_config, train as run_training
    from .weights import resolve_root

    overrides = dict(stage=stage, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                     mixed_precision=mixed_precision, model=model, checkpoint_every=checkpoint_every,
                     num_workers=num_workers, seed=seed, cache_latents=cache_latents)
    cfg = load_train_config(config, overrides)
    root = resolve_root(model_root)
    quiet_libraries()
    if align:
        from .data import align_dataset
        from .faces import FaceHelper

        aligned = output / "aligned-data"
        if _shard()[0] == 0:
            data, skipped = align_dataset(FaceHelper(root, detector.value, use_parse=False), data, aligned)
        else:  # under accelerate launch the first process aligns; the others wait for it
            import time

            while not (aligned / ".mgfr-aligned.json").is_file():
                time.sleep(1)
            data, skipped = aligned, []
        if skipped:
            err.print(f"--align: {len(skipped)} image(s) without a detectable face were left out, e.g. {shown(skipped[0])}")
    with Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                  TimeRemainingColumn(), console=err) as progress:
        task = progress.add_task("", total=cfg.max_steps)

        def on_step(step, loss, rate):
            progress.update(task, completed=step, description=f"loss {loss:.4f}  {rate:.1f} samples/s")

        final = run_training(cfg, base_path=base or root / "sd21-base", data_dir=data, run_dir=output, init=init,
                             resume=resume, identity_path=root / ARCFACE_FILE, on_step=on_step)
    out.print(f"adapter written to {final} (use: mgfr restore ... --checkpoint {output})")


@app.command()
def degrade(
    inputs: Annotated[list[str], typer.Argument(help="HQ images, folders or globs.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the degraded copies (tree mirrored).")],
    config: Annotated[Optional[Path], typer.Option(help="Training config YAML whose `degradation:` ranges to use.")] = None,
    seed: Annotated[int, typer.Option(help="Image i uses seed + i: the same command gives the same files.")] = 0,
    recursive: RecursiveOpt = False,
):
    """Write synthetic low-quality copies of images (to build test sets), with params.json."""
    import json

    import numpy as np

    from .batch import FAILED, RESTORED, Outcome, collect_inputs
    from .degrade import degrade as apply
    from .io import atomic_write_bytes, read_image, write_image
    from .train import load_train_config

    cfg = load_train_config(config, {}).degradation
    items, outcomes = collect_inputs(inputs, recursive)
    params = {}
    for i, item in enumerate(items):
        try:
            lq, p = apply(read_image(item.path).rgb8(), cfg, np.random.default_rng([seed, i]))
        except MgfrError as exc:
            outcomes.append(Outcome(item.path, FAILED, str(exc)))
            continue
        target = output / item.relative.with_suffix(".png")
        write_image(target, lq)
        params[str(item.relative)] = p
        outcomes.append(Outcome(item.path, RESTORED, "", target, 0))
    atomic_write_bytes(output / "params.json", json.dumps(params, indent=1, default=list).encode())
    raise typer.Exit(_summary(outcomes, "mgfr degrade", done="degraded"))


@app.command("eval")
def evaluate_cmd(
    pred: Annotated[Path, typer.Option(help="Folder of restored images.")],
    gt: Annotated[Path, typer.Option(help="Folder of ground-truth images (paired by file name).")],
    ref: Annotated[Optional[Path], typer.Option(help="Folder of references: adds identity cosine pred vs reference.")] = None,
    report: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write per-image values and the mean as CSV.")] = None,
    device: DeviceOpt = Device.auto,
    model_root: ModelRootOpt = None,
):
    """PSNR, SSIM, LPIPS and ArcFace identity cosine per image and averaged (metrics whose weights are missing are skipped, and said so)."""
    from rich.table import Table

    from .evaluate import LPIPS_TRUNK, Lpips, evaluate, write_csv
    from .identity import ARCFACE_FILE, IdentityEncoder
    from .weights import resolve_root

    for folder, flag in ((pred, "--pred"), (gt, "--gt")):
        if not folder.is_dir():
            raise MgfrError(f"{flag} {folder}: not a folder")
    root = resolve_root(model_root)
    dev, _ = resolve_device(device)
    skipped = []
    lp = Lpips(root / LPIPS_TRUNK, dev) if (root / LPIPS_TRUNK).is_file() else skipped.append("lpips (mgfr weights fetch lpips-alex)")
    ident = IdentityEncoder(root / ARCFACE_FILE, dev) if (root / ARCFACE_FILE).is_file() else skipped.append("identity (mgfr weights fetch arcface)")
    result = evaluate(pred, gt, lpips_model=lp, identity=ident, ref_dir=ref)
    table = Table(title=f"mgfr eval: {len(result.rows)} pairs")
    table.add_column("image", overflow="fold")
    for m in result.metrics:
        table.add_column(m, justify="right")
    for r in result.rows:
        table.add_row(r["name"], *(f"{r[m]:.4f}" for m in result.metrics))
    if result.rows:
        table.add_row("[bold]mean[/bold]", *(f"[bold]{v:.4f}[/bold]" for v in result.mean().values()))
    out.print(table)
    for path, why in result.problems:
        out.print(f"[yellow]skipped[/yellow] {path}: {why}")
    if skipped:
        out.print("not computed: " + "; ".join(skipped))
    if report is not None:
        write_csv(result, report)
    raise typer.Exit(0 if result.rows else 1)


ManifestOpt = Annotated[Optional[Path], typer.Option("--manifest", help="Manifest file [default: $MGFR_MANIFEST, else weights/manifest.yaml].")]


def _manifest(path: Optional[Path]):
    from .weights import load_manifest

    return load_manifest(path)


@weights_app.command("list")
def weights_list(model_root: ModelRootOpt = None, manifest: ManifestOpt = None):
    """Every manifest entry: files, state, licence and what uses it (no hashing; see `check`)."""
    from rich.table import Table

    from .weights import entry_state, resolve_root

    root = resolve_root(model_root)
    table = Table(title=f"weights in {root}")
    for col in ("name", "state", "used by", "licence"):
        table.add_column(col, overflow="fold")
    for e in _manifest(manifest).entries:
        table.add_row(e.name + (" (optional)" if e.optional else ""), entry_state(e, root, hash_files=False),
                      e.used_by, e.license)
    out.print(table)


@weights_app.command("fetch")
def weights_fetch(
    names: Annotated[Optional[list[str]], typer.Argument(help="Entries to fetch [default: every required one].")] = None,
    allow_unpinned: Annotated[bool, typer.Option("--allow-unpinned", help="Fetch files with no pinned SHA-256 and record the hash measured.")] = False,
    model_root: ModelRootOpt = None,
    manifest: ManifestOpt = None,
):
    """Download entries with resume, verify SHA-256, place each file atomically."""
    from .weights import fetch_entry, resolve_root

    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    m = _manifest(manifest)
    root = resolve_root(model_root)
    entries = [m.get(n) for n in names] if names else [e for e in m.entries if not e.optional]
    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=err) as progress:
        tasks = {}

        def on_bytes(path, done, total):
            if path not in tasks:
                tasks[path] = progress.add_task(path, total=total)
            progress.update(tasks[path], completed=done, total=total)

        for e in entries:
            placed = fetch_entry(e, root, allow_unpinned=allow_unpinned, progress=on_bytes)
            out.print(f"{e.name}: " + (f"placed {len(placed)} file(s)" if placed else "already present"))
            if e.convert:
                from .provision import convert_entry, converted_dir

                if placed or not (converted_dir(root, e.name) / "config.json").is_file():
                    out.print(f"{e.name}: converted to {convert_entry(e, root, m)}")


@weights_app.command("convert")
def weights_convert(
    kind: Annotated[str, typer.Argument(help="The format of SRC: diffbir (an IRControlNet for SD 2.1 base).")],
    src: Annotated[Path, typer.Argument(help="The checkpoint (.pth, .ckpt, .pt or .safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Adapter folder to write (what --checkpoint loads).")],
    source: Annotated[str, typer.Option(help="Which release SRC is: diffbir-v2 or diffbir-v1-face.")] = "diffbir-v2",
    base: Annotated[Optional[Path], typer.Option(help="Base whose UNet the LCA must fit [default: MODEL_ROOT/sd21-base, else SD 2.1's shape].")] = None,
    model_root: ModelRootOpt = None,
    manifest: ManifestOpt = None,
):
    """Convert public ControlNet weights into an mgfr adapter folder (refusing any that do not fit exactly)."""
    from .convert import convert_diffbir
    from .provision import base_unet_config, incompatible_hashes
    from .weights import resolve_root

    if kind != "diffbir":
        raise typer.BadParameter("KIND must be diffbir")
    root = resolve_root(model_root)
    done = convert_diffbir(src, output, unet_config=base_unet_config(root, base), source=source,
                           known_bad=incompatible_hashes(_manifest(manifest), root))
    out.print(f"wrote {done} (use: mgfr restore ... --checkpoint {done})")


@weights_app.command("check")
def weights_check(names: Annotated[Optional[list[str]], typer.Argument()] = None, model_root: ModelRootOpt = None,
                  manifest: ManifestOpt = None):
    """Hash every present file against the manifest; exit 1 if any is corrupt."""
    from .weights import check_entry, resolve_root

    m = _manifest(manifest)
    root = resolve_root(model_root)
    bad = 0
    for e in [m.get(n) for n in names] if names else m.entries:
        for st in check_entry(e, root):
            colour = {"verified": "green", "missing": "yellow", "corrupt": "red"}.get(st.state, "cyan")
            out.print(f"[{colour}]{st.state:>18}[/{colour}]  {st.path}" + (f"  ({st.detail})" if st.detail else ""))
            bad += st.state == "corrupt"
    raise typer.Exit(1 if bad else 0)


@weights_app.command("path")
def weights_path(name: str, model_root: ModelRootOpt = None, manifest: ManifestOpt = None):
    """Print where an entry's (first) file lives in the model root."""
    from .weights import resolve_root

    e = _manifest(manifest).get(name)
    first = e.files[0].path
    out.print(str(resolve_root(model_root) / (first.split("/")[0] if "/" in first else first)), soft_wrap=True)


@app.command()
def doctor(model_root: ModelRootOpt = None, manifest: ManifestOpt = None):
    """What is installed, what is missing, and what works now. Exit 0 only when restore can run."""
    from .doctor import diagnose
    from .weights import resolve_root

    report = diagnose(resolve_root(model_root), _manifest(manifest))
    for section, rows in report.sections.items():
        out.print(f"[bold]{section}[/bold]")
        for ok, label, detail in rows:
            mark = "[green]ok[/green]  " if ok else "[red]no[/red]  "
            out.print(f"  {mark}{label}" + (f": {detail}" if detail else ""))
    raise typer.Exit(0 if report.healthy else 1)


def main() -> None:
    """Entry point: a known error is one red line (exit 1, 2 for usage); anything else keeps its traceback."""
    from rich.markup import escape

    try:
        code = app(standalone_mode=False)
    except MgfrError as exc:
        err.print(f"[red]error:[/red] {escape(shown(exc))}", markup=True, highlight=False)
        sys.exit(2 if isinstance(exc, ConfigError) and str(exc).startswith("--") else 1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except typer.TyperException as exc:  # usage errors from the command line (exit 2)
        exc.show(file=sys.stderr)
        sys.exit(exc.exit_code)
    if code == 130:  # Ctrl-C (typer turns KeyboardInterrupt into exit code 130)
        err.print("[red]interrupted[/red]: finished outputs are kept; run again to resume", markup=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
