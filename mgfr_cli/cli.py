"""The ``mgfr`` command line: small typed commands over the library.

Only the standard library, typer and rich are imported at the top, so ``mgfr --help`` answers at
once; torch, diffusers, OpenCV, facexlib and insightface load inside the commands that need them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from mgfr_cli.errors import ConfigError, MgfrError, UsageError, known
from mgfr_cli.app.options import (Detector, DetectorOpt, Device, DeviceOpt, FaceIndexOpt, LargestOpt, MaxMpOpt, MinFaceOpt, ModelRootOpt,
                      OnlyCenterOpt, RecursiveOpt, RefKOpt, RefLibraryOpt, RefThresholdOpt, check_outputs, finite, given, quiet_libraries, repeated_options, unused_after, unused_flags, resolve_device, selection as face_selection,
                      check_refs, shard, show_version)
from mgfr_cli.app.terminal import (announce_downloads, checklist, download_progress, err, interrupted, notes,
                                   open_library, out, run_batch, shown, stopping_signals, summary)
from mgfr_cli.app.weights_cli import ManifestOpt, weights_app

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="MGFR: multi-modal guided diffusion face restoration (prompts, references, identity).")
app.add_typer(weights_app, name="weights")


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print mgfr's version (and torch's, diffusers') and exit.")] = False):
    pass


@app.command()
def restore(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder; the input tree is mirrored in it.")],
    ref: Annotated[Optional[list[Path]], typer.Option("--ref", metavar="<path>", help="Reference image or folder (repeatable).")] = None,
    ref_library: RefLibraryOpt = None,
    ref_k: RefKOpt = 3,
    ref_threshold: RefThresholdOpt = 0.3,
    identity_guidance: Annotated[Optional[float], typer.Option("--identity-guidance", callback=finite, min=0, max=10, help="Strength of identity guidance toward the references (0: off) [default: 0.05 when references are given and the adapter has no trained reference branch].")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Attributes to keep, e.g. 'brown eyes, beard'.")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Attributes to avoid, e.g. 'eyeglasses'.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Adapter checkpoint or training run folder [default: MODEL_ROOT/mgfr-adapter, else the public DiffBIR prior MODEL_ROOT/diffbir-v2-lca].")] = None,
    base: Annotated[Optional[Path], typer.Option(help="Stable Diffusion base (diffusers folder or .safetensors) [default: MODEL_ROOT/sd21-base].")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Denoising steps [default: 30; 50 for a DiffBIR adapter].")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="ddpm (DiffBIR's ancestral 'spaced' sampler: its published results), dpmpp or ddim (deterministic ODE solvers: a different sample) [default: ddpm for a DiffBIR adapter, dpmpp for MGFR adapters].")] = None,
    guidance_quality: Annotated[Optional[float], typer.Option(callback=finite, help="Weight l_nq of the negative-quality direction [default: 4; 3 for a DiffBIR adapter, its scale s = 1 + l_nq].")] = None,
    guidance_attribute: Annotated[float, typer.Option(callback=finite, help="Weight l_na of the negative-attribute direction.")] = 2.0,
    control_strength: Annotated[float, typer.Option(min=0, max=2, help="How strongly the low-quality face steers the sample (DiffBIR's --strength): below 1 the prior invents more, above 1 it follows the input more.")] = 1.0,
    color_fix: Annotated[str, typer.Option(help="Colour correction toward the input: wavelet, adain or none.")] = "wavelet",
    seed: Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Random seed (face K of a photo uses seed + K).")] = 0,
    start_from: Annotated[str, typer.Option(help="noise, or cond: start from the condition latent noised to the first step (DiffBIR's option).")] = "noise",
    cleaner: Annotated[str, typer.Option(help="Clean the face before encoding it: auto (swinir-face for DiffBIR adapters: DiffBIR's face pipeline, non-commercial provenance; none for MGFR adapters), swinir-face, swinir-codeformer (Apache-2.0) or none.")] = "auto",
    bg_upsampler: Annotated[str, typer.Option(help="Background upsampler: auto (when --upscale > 1: realesrgan-x2 up to x2, realesrgan-x4 above), realesrgan-x2 or realesrgan-x4 (at every --upscale, 1 too: it cleans the background) or none.")] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never download missing weights (also MGFR_OFFLINE=1 or HF_HUB_OFFLINE=1).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Faces per GPU batch (halved automatically on out-of-memory).")] = 8,
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile + CUDA graphs: steps 1.6-4x faster after a first batch that compiles for ~1.5 min (H100); for many photos.")] = False,
    upscale: Annotated[float, typer.Option(callback=finite, min=0.1, max=8, help="Resize the background by this factor.")] = 1.0,
    face_upsample: Annotated[bool, typer.Option("--face-upsample", help="Enlarge faces that the output shows larger than their 512 crop with Real-ESRGAN before pasting them (CodeFormer's --face_upsample).")] = False,
    has_aligned: Annotated[bool, typer.Option("--has-aligned", help="Inputs are already aligned face crops.")] = False,
    save_faces: Annotated[bool, typer.Option("--save-faces", help="Also write aligned and restored crops to OUT/_faces.")] = False,
    suffix: Annotated[str, typer.Option(help="Added to output file names before the extension.")] = "",
    ext: Annotated[str, typer.Option(help="Output format: auto (keep the input's, png where it cannot hold the data), png, jpg.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo photos whose output exists.")] = False,
    crf: Annotated[int, typer.Option(min=0, max=51, help="Videos: H.264 quality of the output (lower is better, larger).")] = 18,
    video_noise: Annotated[str, typer.Option(help="Videos: track (every frame of a person starts from the same noise: stable) or frame (fresh noise per frame, to compare).")] = "track",
    report: Annotated[Optional[bool], typer.Option("--report/--no-report", help="Write OUT/index.html, a review page with a before/after slider per photo [default: on when there is more than one photo].")] = None,
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
    from mgfr_cli.app.batch import RestoreJob
    from mgfr_cli.app.outputs import recipe_text
    from mgfr_cli.app.paste import face_upsample_unused
    from mgfr_cli.faces.conditions import ConditionSpec
    from mgfr_cli.api import Restorer
    from mgfr_cli.app.summary import shares_before
    from mgfr_cli.model.identity_guidance import reference_notes
    from mgfr_cli.model.pipeline import DiffusionRestorer, RestoreSettings

    check_outputs(output, video_noise, ext, suffix)
    RestoreSettings(guidance_quality=guidance_quality or 0.0, guidance_attribute=guidance_attribute,
                    scheduler=scheduler or "ddpm", color_fix=color_fix, start_from=start_from).check()
    selection = face_selection(only_center_face, largest_face, face_index, min_face_size)
    flags = ConditionSpec(prompt=prompt, negative_prompt=negative_prompt, refs=tuple(ref) if ref else None)
    check_refs(ref or (), max_megapixels)  # a bad --ref fails the run at once, not every photo one by one
    resolve_device(device, precision)  # a bad --device/--precision fails before any download
    quiet_libraries()
    rank, world = shard()
    seen_shares = shares_before(output, world) if rank == 0 and world > 1 else set()  # an earlier launch's
    notes(unused_flags(ctx, has_aligned=has_aligned, library=ref_library is not None, refs=bool(ref)))
    ref_library = None if ref else ref_library  # --ref wins for every face: the library is not opened
    with download_progress() as progress:
        loaded = Restorer.load(model_root, checkpoint=checkpoint, base=base, cleaner=cleaner,
                               bg_upsampler="none" if has_aligned else bg_upsampler,
                               upscale=upscale, device=device.value, precision=precision,
                               detector=None if has_aligned else detector.value, offline=offline,
                               references=bool(ref) or ref_library is not None, identity_guidance=identity_guidance,
                               library=ref_library is not None, face_upsample=face_upsample and not has_aligned,
                               announce=announce_downloads, progress=progress)
    helper, pipeline, upsampler, judge = loaded.helper, loaded.pipeline, loaded.upsampler, loaded.judge
    prof = pipeline.profile
    notes(loaded.notes)
    notes([f"--face-upsample: {face_upsample_unused(upsampler, False)}"] if face_upsample and not has_aligned
          and upsampler is None else [])
    if prof.diffbir_output and steps is None and scheduler is None and guidance_quality is None and cleaner == "auto":
        notes([f"{prof.source}: DiffBIR v2's published face recipe (spaced DDPM sampler, {prof.default_steps} steps, "
               f"scale {1 + prof.default_guidance:g}, face SwinIR cleaner, wavelet colour fix)"])
    settings = loaded.settings(steps=steps, scheduler=scheduler, guidance_quality=guidance_quality,
                               guidance_attribute=guidance_attribute, identity_guidance=identity_guidance,
                               color_fix=color_fix, seed=seed, start_from=start_from, control_strength=control_strength)
    job = RestoreJob(inputs=tuple(inputs), output=output, flags=flags, selection=selection, upscale=upscale,
                     face_upsample=face_upsample,
                     has_aligned=has_aligned, save_faces=save_faces, suffix=suffix, ext=ext, overwrite=overwrite,
                     recursive=recursive, max_megapixels=max_megapixels, batch_size=batch_size, seed=seed,
                     shard=(rank, world), report=report, ref_k=ref_k, ref_threshold=ref_threshold, crf=crf,
                     video_noise=video_noise, clip_flags=tuple(given(ctx, ("crf", "video_noise"))),
                     recipe=recipe_text(settings, loaded.models(), flags, upscale, selection, has_aligned, ref_library,
                                        ref_k, ref_threshold, face_upsample))
    if compile:
        notes([f"--compile: the first batch compiles the denoiser for {batch_size} faces (about 1.5 minutes on an "
               "H100); the steps after it run 1.6x (16 faces) to 4x (one face) faster"])
    pipeline.optimize(compile=compile, channels_last=pipeline.device.type == "cuda")
    restorer = DiffusionRestorer(pipeline, settings, pad_to=batch_size if compile else 0)
    library = open_library(ref_library, helper, pipeline, output, max_megapixels) if ref_library else None
    code = run_batch(job, helper, restorer, upsampler, judge, library, seen_shares)
    notes(reference_notes(prof, settings, restorer, pipeline.recogniser is not None, judge is not None))
    notes(unused_after(ctx, restorer))
    raise typer.Exit(code)


@app.command()
def ui(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the page.")] = 7860,
    share: Annotated[bool, typer.Option("--share", help="Also make a public Gradio share link (off: nothing leaves this machine).")] = False,
    max_upload_mb: Annotated[float, typer.Option(min=1, max=4096, callback=finite, help="Refuse larger uploads.")] = 50.0,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Adapter [default: as restore].")] = None,
    base: Annotated[Optional[Path], typer.Option(help="Stable Diffusion base [default: MODEL_ROOT/sd21-base].")] = None,
    cleaner: Annotated[str, typer.Option(help="As restore: auto, swinir-codeformer, swinir-face or none.")] = "auto",
    bg_upsampler: Annotated[str, typer.Option(help="As restore: auto, realesrgan-x2, realesrgan-x4 or none.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp16, bf16 or fp32.")] = "auto",
    detector: DetectorOpt = Detector.resnet50,
    device: DeviceOpt = Device.auto,
    model_root: ModelRootOpt = None,
    max_megapixels: MaxMpOpt = 100.0,
    ref_library: RefLibraryOpt = None,
    ref_k: RefKOpt = 3,
    ref_threshold: RefThresholdOpt = 0.3,
):
    """A local web page: upload a photo or a clip (and references), type attributes, compare before/after."""
    from mgfr_cli.app.ui import offline_environment

    offline_environment()  # before gradio is imported
    notes(unused_flags(ctx, library=ref_library is not None))
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise MgfrError("mgfr ui needs the optional web extra: pip install -e '.[ui]'")
    import shutil

    from mgfr_cli.app.ui import build_app, load_models, serve
    from mgfr_cli.weights.files import resolve_root

    quiet_libraries()
    models = load_models(resolve_root(model_root), detector=detector.value, base=base, checkpoint=checkpoint,
                         cleaner=cleaner, bg_upsampler=bg_upsampler, device=device.value, precision=precision,
                         max_megapixels=max_megapixels, library=ref_library is not None)
    if models.missing:
        notes([f"the page starts, but cannot restore yet: {models.missing}"])
    demo = build_app(models)
    if ref_library is not None and not models.missing:  # faces without uploaded references ask the library
        try:  # its cache: in the library, else in the page's temporary folder
            models.library = open_library(ref_library, models.helper, models.pipeline, demo.mgfr_tmp, max_megapixels)
        except BaseException:
            shutil.rmtree(demo.mgfr_tmp, ignore_errors=True)
            raise
        models.ref_k, models.ref_threshold = ref_k, ref_threshold
    out.print(f"mgfr ui: http://{host}:{port} (Ctrl-C stops it)")
    serve(demo, host, port, share, max_upload_mb)


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
    from mgfr_cli.faces.align import align_inputs
    from mgfr_cli.faces.helper import FaceHelper
    from mgfr_cli.files import not_a_file
    from mgfr_cli.weights.files import resolve_root

    selection = face_selection(only_center_face, largest_face, face_index, min_face_size)
    dev, _ = resolve_device(device)
    not_a_file(output)  # before the detector loads
    helper = FaceHelper(resolve_root(model_root), detector.value, face_size=face_size, device=dev, use_parse=False)
    outcomes = align_inputs(helper, inputs, output, selection, recursive, max_megapixels, lambda n: notes([n]))
    raise typer.Exit(summary(outcomes, "mgfr align", done="aligned"))


@app.command()
def train(
    ctx: typer.Context,
    stage: Annotated[int, typer.Option(min=1, max=2, help="1: LQ branch with prompts; 2: reference/identity branch.")],
    data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Stage 1: folder of aligned HQ faces; stage 2: one folder per identity.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (checkpoints, logs, final adapter).")],
    base: Annotated[Optional[Path], typer.Option(help="Stable Diffusion base [default: MODEL_ROOT/sd21-base].")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Training config YAML (every knob); flags override it.")] = None,
    init: Annotated[Optional[Path], typer.Option(exists=True, help="Stage 1: an LCA to fine-tune (e.g. MODEL_ROOT/diffbir-v2-lca); stage 2: the stage-1 run folder or adapter to start from.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o from its latest checkpoint.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Steps to train [default: the config's, else 100000].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per step, per process [default: the config's, else 4].")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="AdamW learning rate [default: the config's, else 1e-5].")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="no, fp16 or bf16 (Accelerate) [default: the config's, else no].")] = None,
    model: Annotated[Optional[str], typer.Option(help="Architecture config in models/ (or a YAML path).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(min=1, help="Steps between checkpoints (what --resume continues from) [default: the config's, else 2000].")] = None,
    num_workers: Annotated[Optional[int], typer.Option(min=0, help="Data-loading processes [default: the config's, else 2].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (noise, timesteps, degradations, data order) [default: the config's, else 0].")] = None,
    cache_latents: Annotated[Optional[bool], typer.Option("--cache-latents/--no-cache-latents", help="Encode every clean image with the VAE once, up front.")] = None,
    align: Annotated[bool, typer.Option("--align", help="Data is unaligned: align each image's largest face once, cached in RUN_DIR/aligned-data.")] = False,
    max_megapixels: Annotated[Optional[float], typer.Option("--max-megapixels", min=0.01, max=100000, callback=finite, help="Refuse larger training images (listed before the first step) [default: 100, or the config's].")] = None,
    detector: DetectorOpt = Detector.resnet50,
    model_root: ModelRootOpt = None,
):
    """Train an MGFR adapter (multi-GPU: `accelerate launch -m mgfr_cli.cli train ...`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mgfr_cli.faces.identity import ARCFACE_FILE
    from mgfr_cli.training.run_folder import check_run_folder, check_writable
    from mgfr_cli.training.train import train as run_training
    from mgfr_cli.training.train_config import load_train_config, resume_config, run_config_path
    from mgfr_cli.weights.files import resolve_root

    notes(unused_flags(ctx, library=True, aligned_data=not align))
    overrides = dict(stage=stage, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                     mixed_precision=mixed_precision, model=model, checkpoint_every=checkpoint_every,
                     num_workers=num_workers, seed=seed, cache_latents=cache_latents, max_megapixels=max_megapixels)
    cfg = load_train_config(config, overrides)
    if resume and (saved := run_config_path(output)[0]).is_file():  # the run's own config, with this command's changes
        from mgfr_cli.training.checkpoints import run_processes

        cfg, changed = resume_config(saved, config, overrides, shard()[1], run_processes(output))
        notes(changed + (["--init: not used with --resume (the run's checkpoint holds every weight)"] if init else []))
    check_run_folder(output)  # before --align writes into it
    check_writable(output)
    root = resolve_root(model_root)
    quiet_libraries()
    if align:
        from mgfr_cli.training.data import align_dataset
        from mgfr_cli.faces.helper import FaceHelper

        aligned = output / "aligned-data"
        if shard()[0] == 0:
            data, skipped = align_dataset(FaceHelper(root, detector.value, use_parse=False), data, aligned)
        else:  # under accelerate launch the first process aligns; the others wait for it
            import time

            while not (aligned / ".mgfr-aligned.json").is_file():
                time.sleep(1)
            data, skipped = aligned, []
        if skipped:
            err.print(f"--align: {len(skipped)} image(s) without a detectable face were left out, e.g. {shown(skipped[0])}")
    progress = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}", markup=False),
                        TimeRemainingColumn(), console=err)
    task = progress.add_task("", total=cfg.max_steps)

    def on_step(step, loss, rate):
        progress.start()  # shown from the first step: a run refused before it (a used -o...) shows no bar
        progress.update(task, completed=step, description=f"loss {loss:.4f}  {rate:.1f} samples/s")

    try:
        final = run_training(cfg, base_path=base or root / "sd21-base", data_dir=data, run_dir=output, init=init,
                             resume=resume, identity_path=root / ARCFACE_FILE, on_step=on_step)
    finally:
        progress.stop()
    out.print(f"adapter written to {final} (use: mgfr restore ... --checkpoint {output})")


@app.command()
def degrade(
    inputs: Annotated[list[str], typer.Argument(help="HQ images, folders or globs.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the degraded copies (tree mirrored).")],
    config: Annotated[Optional[Path], typer.Option(help="Training config YAML whose `degradation:` ranges to use.")] = None,
    seed: Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Image i uses seed + i: the same command gives the same files.")] = 0,
    recursive: RecursiveOpt = False,
    max_megapixels: MaxMpOpt = 100.0,
):
    """Write synthetic low-quality copies of images (to build test sets), with params.json."""
    from mgfr_cli.training.degrade import degrade_inputs
    from mgfr_cli.training.train_config import load_train_config

    outcomes = degrade_inputs(inputs, output, load_train_config(config, {}).degradation, seed, recursive,
                              lambda n: notes([n]), max_megapixels)
    raise typer.Exit(summary(outcomes, "mgfr degrade", done="degraded"))


@app.command("eval")
def evaluate_cmd(
    pred: Annotated[Path, typer.Option(help="Folder of restored images.")],
    gt: Annotated[Optional[Path], typer.Option(help="Folder of ground-truth images (paired by file name); without it, CLIP-IQA (and with --ref, ref_identity) only.")] = None,
    ref: Annotated[Optional[Path], typer.Option(help="Folder of references: adds identity cosine pred vs reference.")] = None,
    report: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write per-image values and the mean as CSV.")] = None,
    device: DeviceOpt = Device.auto,
    model_root: ModelRootOpt = None,
):
    """PSNR, SSIM, LPIPS, ArcFace identity cosine and CLIP-IQA per image and averaged (metrics whose weights are missing are skipped, and said so)."""
    from rich.table import Table

    from mgfr_cli.training.evaluate import check_eval_paths, evaluate, load_metrics, write_csv
    from mgfr_cli.weights.files import resolve_root

    check_eval_paths(pred, gt, ref, report)
    models, skipped = load_metrics(resolve_root(model_root), resolve_device(device)[0], gt=gt is not None, ref=ref is not None)
    if gt is None and not models:
        raise MgfrError(f"--pred {pred}: without --gt only CLIP-IQA (mgfr weights fetch clip-rn50) and, with --ref, "
                        f"ref_identity (mgfr weights fetch arcface) can be computed, and neither is in the model root")
    result = evaluate(pred, gt, ref_dir=ref, **models)
    table = Table(title=f"mgfr eval: {len(result.rows)} " + ("pairs" if gt is not None else "images"))
    table.add_column("image", overflow="fold")
    for m in result.metrics:
        table.add_column(m, justify="right")
    for r in result.rows:
        table.add_row(r["name"], *(f"{r[m]:.4f}" if r[m] == r[m] else "-" for m in result.metrics))
    if result.rows:
        table.add_row(Text("mean", "bold"), *(Text(f"{v:.4f}", "bold") for v in result.mean().values()))
    out.print(table)
    for path, why in result.problems:
        out.print(Text.assemble(("skipped", "yellow"), f" {shown(path)}: {shown(why)}"))
    for path, why in result.notes:
        out.print(Text.assemble(("note", "yellow"), f" {shown(path)}: {shown(why)}"))
    if skipped:
        out.print("not computed: " + "; ".join(skipped))
    if report is not None:
        notes([write_csv(result, report)])  # a note when a file of the user's had that name (kept)
    raise typer.Exit(0 if result.rows else 1)


@app.command()
def doctor(model_root: ModelRootOpt = None, manifest: ManifestOpt = None):
    """What is installed, what is missing, and what works now. Exit 0 only when restore can run."""
    from mgfr_cli.weights.doctor import diagnose
    from mgfr_cli.weights.files import load_manifest, resolve_root

    report = diagnose(resolve_root(model_root), load_manifest(manifest))
    checklist(report.sections)
    raise typer.Exit(0 if report.healthy else 1)


def main() -> None:
    """Entry point: a known error is one red line (exit 1, 2 for usage); anything else keeps its traceback. SIGTERM
    and SIGHUP stop a command as Ctrl-C does (exit 128 + the signal)."""
    with stopping_signals() as stopped:
        try:
            command = typer.main.get_command(app)  # built once: the check of repeated options and the run share it
            notes(repeated_options(command, sys.argv[1:]))
            code = command(standalone_mode=False)
        except (MgfrError, OSError) as exc:
            exc = known(exc)  # an OSError: one line for a full disk or a read-only folder, else raised again
            err.print(Text.assemble(("error:", "red"), f" {shown(exc)}"))
            usage = isinstance(exc, UsageError) or (isinstance(exc, ConfigError) and str(exc).startswith("--"))
            sys.exit(2 if usage else 1)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except (typer.Abort, KeyboardInterrupt):
            code = 130
        except typer.TyperException as exc:  # usage errors from the command line (exit 2)
            exc.show(file=sys.stderr)
            sys.exit(exc.exit_code)
        if code == 130:  # Ctrl-C (typer turns KeyboardInterrupt into exit code 130), or a signal taken as one
            code = interrupted(sys.argv, stopped)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
