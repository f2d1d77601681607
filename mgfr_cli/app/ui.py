"""``mgfr ui``: a local web page (Gradio) to restore one photo (or clip) with prompts and references.

The page runs the same code as ``mgfr restore``: each request is a one-photo batch job (the uploaded file
read by :func:`io.read_image` from its path, never through Gradio's decoding; faces detected, restored and
pasted back by :class:`batch.BatchRestorer`), written as lossless PNG into a per-request temporary folder.
Models load once, at start; one job runs at a time (a bounded queue); it listens on 127.0.0.1 unless told
otherwise, sends no telemetry, makes no share link unless asked, and keeps no history in the browser.
Missing weights do not stop the page: it starts and says what is missing and the command that gets it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mgfr_cli.faces.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

FACE_MODES = {"every face": {}, "largest face": {"largest_face": True}, "centre face": {"only_center_face": True}}


@dataclass
class UiModels:
    """What the page restores with, loaded once (or why it cannot restore)."""

    helper: object = None
    pipeline: object = None
    upsampler: object = None
    missing: str = ""  # the one-line reason restore cannot run, shown on the page
    max_megapixels: float = 100.0
    library: object = None  # reference_library.ReferenceLibrary (mgfr ui --ref-library), or None
    ref_k: int = 3
    ref_threshold: float = 0.3


def offline_environment() -> None:
    """No telemetry, no version check, no hub calls: set before gradio is imported."""
    for key, value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                       ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(key, value)


def describe(models: UiModels, ignored) -> str:
    p = models.pipeline
    prof = p.profile
    parts = [f"Restored by the **{plain(prof.source)}** adapter (stages trained: {p.adapter.config.get('stages_trained') or 'not recorded'})",
             f"cleaner: {'SwinIR' if p.cleaner is not None else 'none'}",
             f"background: {'Real-ESRGAN' if models.upsampler is not None else 'Lanczos resize'}"]
    text = "; ".join(parts) + "."
    if ignored:
        text += (f" **Not used:** {', '.join(sorted(ignored))} (the {prof.source} adapter has no trained reference "
                 f"branch, and identity guidance is off or its recogniser is missing: mgfr weights fetch arcface-irse50).")
    return text


def plain(text) -> str:
    """Text for the page's Markdown as written: a file named 'IMG_*1*_[a].jpg' is not emphasis or a link."""
    return re.sub(r"([\\`*_\[\]<>~])", r"\\\1", str(text))


def library_found(outcome) -> str:
    """What the reference library gave each face (faces with uploaded references do not ask it)."""
    rows = [f"face {r['face']}: " + (", ".join(f"{plain(Path(m['file']).name)} ({m['similarity']:.2f})" for m in r["matches"])
                                     or "no match") for r in outcome.library]
    return f" **Reference library:** {'; '.join(rows)}." if rows else ""


def unused_sliders(restorer, settings, profile) -> str:
    """Sliders moved from their defaults that no face could use: said under the result, as the CLI names flags."""
    from mgfr_cli.model.pipeline import RestoreSettings
    from mgfr_cli.model.prompts import cut_notes

    unused, idle = [], restorer.idle()
    if settings.guidance_attribute != RestoreSettings.guidance_attribute and "guidance_attribute" in idle:
        unused.append("attribute guidance (it steers away from the attributes to avoid, and none were given)")
    if settings.identity_guidance != profile.default_identity_guidance and "identity_guidance" in idle:
        unused.append(f"identity guidance ({idle['identity_guidance']}" + (": upload one)" if not restorer.referenced
                                                                            else ")"))
    cut = "".join(f" **Cut:** {plain(line)}." for line in cut_notes(restorer))  # a prompt's words past its length
    return (f" **Not used:** {'; '.join(unused)}." if unused else "") + cut


def _whole(value, name: str) -> int:
    """A whole number from the page (Gradio sends floats, and anything through its API), or the CLI's error."""
    import math

    from mgfr_cli.errors import ConfigError

    try:
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise ValueError
        return int(value) if isinstance(value, int) else int(number)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"--{name} must be a whole number, got {value!r}") from None


def restore_one(models: UiModels, photo: str | None, refs: list[str] | None, prompt: str, negative: str,
                guidance_quality: float, guidance_attribute: float, steps: int, seed: int, faces: str,
                color_fix: str, upscale: float, use_cleaner: bool, workdir: Path, progress=None,
                identity_guidance: float | None = None, control_strength: float | None = None, face_upsample=False):
    """One photo through the batch machinery; returns (before PNG, after PNG, [(crop, label)], status)."""
    from mgfr_cli.app.batch import NO_FACE, RESTORED, BatchRestorer, RestoreJob
    from mgfr_cli.faces.conditions import ConditionSpec
    from mgfr_cli.errors import InputError, MgfrError
    from mgfr_cli.faces.helper import FaceSelection
    from mgfr_cli.faces.io import is_video_file, read_image, write_image
    from mgfr_cli.model.pipeline import DiffusionRestorer, RestoreSettings

    if models.missing:
        raise MgfrError(models.missing)
    if not photo:
        raise InputError("upload a photo first")
    src = Path(photo)
    clip = is_video_file(src)  # a clip goes the way `mgfr restore clip.mp4` takes: tracked faces, audio kept
    before = None if clip else read_image(src, models.max_megapixels)  # the CLI's reader: EXIF, 16 bit, alpha, size
    workdir.mkdir(parents=True, exist_ok=True)
    prof = models.pipeline.profile
    settings = RestoreSettings(steps=_whole(steps, "steps") or prof.default_steps, scheduler=prof.default_scheduler,
                               guidance_quality=float(guidance_quality),
                               guidance_attribute=float(guidance_attribute), color_fix=color_fix,
                               seed=_whole(seed, "seed"),
                               identity_guidance=prof.default_identity_guidance if identity_guidance is None
                               else float(identity_guidance),
                               control_strength=1.0 if control_strength is None else float(control_strength))
    settings.check()  # the CLI's checks: the same ranges, the same messages
    restorer = DiffusionRestorer(models.pipeline, settings)
    if progress is not None:
        restorer.callback = lambda i, t, x: progress((i + 1) / settings.steps, desc=f"denoising step {i + 1}/{settings.steps}")
    flags = ConditionSpec(prompt=prompt or None, negative_prompt=negative or None,
                          refs=tuple(Path(r) for r in refs) if refs else None)
    job = RestoreJob(inputs=(str(src),), output=workdir / "out", flags=flags, upscale=float(upscale), ext="png",
                     face_upsample=bool(face_upsample) and models.upsampler is not None,
                     overwrite=True, save_faces=True, report=False, max_megapixels=models.max_megapixels,
                     selection=FaceSelection(**FACE_MODES.get(faces, {})), seed=int(seed), ref_k=models.ref_k,
                     ref_threshold=models.ref_threshold)
    cleaner = models.pipeline.cleaner
    models.pipeline.cleaner = cleaner if use_cleaner else None  # one job at a time: safe to switch per request
    batch = BatchRestorer(models.helper, restorer, models.upsampler, library=models.library)
    try:
        outcome = batch.run(job)[0]
    finally:
        models.pipeline.cleaner = cleaner
    if outcome.status == NO_FACE:  # written unrestored by the batch: nothing to show here but that
        raise InputError(f"{src.name}: no face detected" + (" in any frame" if clip else ""))
    if outcome.status != RESTORED:
        raise InputError(f"{src.name}: {outcome.status}" + (f" ({outcome.detail})" if outcome.detail else ""))
    status = describe(models, restorer.ignored) + library_found(outcome) + unused_sliders(restorer, settings, prof)
    if restorer.guided:
        status += f" References steered the face by identity guidance (strength {settings.identity_guidance:g})."
    status += "".join(f" Note: {plain(line)}." for line in batch.notes)  # (a group photo as a reference, say)
    if outcome.detail and not clip:  # what the photo is restored without (frames, a motion photo's clip), as listed
        status += f" Note: {plain(outcome.detail)}."
    if clip:
        flicker = "; ".join(f"track {t['track']}: {t['frames']} frames, flicker {t['flicker']['restored']:.1f} "
                            f"(input {t['flicker']['input']:.1f})" for t in outcome.tracks)
        return None, str(outcome.output), [], f"{status} Clip: {plain(outcome.detail)}. {flicker}."
    before_png = workdir / "before.png"
    write_image(before_png, before.pixels)
    gallery = []
    for crop in sorted((workdir / "out" / "_faces").glob("*.png")):
        kind = "aligned" if crop.stem.endswith("_aligned") else "restored"
        gallery.append((str(crop), f"face {crop.stem.rsplit('_', 2)[-2]} {kind}"))
    return str(before_png), str(outcome.output), gallery, status


def build_app(models: UiModels, queue_size: int = 8):
    import gradio as gr

    from mgfr_cli.errors import MgfrError, known
    from mgfr_cli.model.pipeline import RestoreSettings

    root = Path(tempfile.mkdtemp(prefix="mgfr-ui-"))
    counter = {"n": 0}

    def run(photo, refs, prompt, negative, gq, ga, steps, seed, faces, color, upscale, cleaner, ig=None, cs=None,
            fu=False, progress=gr.Progress()):
        counter["n"] += 1
        work = root / f"job-{counter['n']}"
        shutil.rmtree(root / f"job-{counter['n'] - 2}", ignore_errors=True)  # keep the last two jobs' files only
        try:
            before, after, gallery, status = restore_one(models, photo, refs, prompt, negative, gq, ga, steps, seed,
                                                         faces, color, upscale, cleaner, work, progress, ig, cs, fu)
        except (MgfrError, OSError) as exc:  # an OSError: a full disk under the job's files, in one line (else raised)
            raise gr.Error(str(known(exc)), print_exception=False) from None
        if before is None:  # a clip: the player shows it, the slider is for photos
            return None, gallery, after, status, gr.update(value=after, visible=True)
        return (before, after), gallery, after, status, gr.update(value=None, visible=False)

    prof = models.pipeline.profile if models.pipeline is not None else None
    with gr.Blocks(title="mgfr: face restoration", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("# mgfr: multi-modal guided face restoration")
        if models.missing:
            gr.Markdown(f"**Cannot restore yet:** {plain(models.missing)}", elem_id="missing")
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.File(label="Photo or video clip", file_types=["image", *IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS],
                                type="filepath", elem_id="photo")  # (HEIC named: browsers' image/* may not hold it)
                refs = gr.File(label="Reference photos of the same person (optional)", file_count="multiple",
                               file_types=["image", *IMAGE_EXTENSIONS], type="filepath", elem_id="refs")
                prompt = gr.Textbox(label="Attributes to keep", placeholder="brown eyes, beard", elem_id="prompt")
                negative = gr.Textbox(label="Attributes to avoid", placeholder="eyeglasses", elem_id="negative")
                with gr.Accordion("Advanced", open=False):
                    gq = gr.Slider(0, 10, value=prof.default_guidance if prof else 4.0, step=0.5, label="Quality guidance")
                    ga = gr.Slider(0, 10, value=RestoreSettings.guidance_attribute, step=0.5,
                                   label="Attribute guidance (away from the attributes to avoid)")
                    steps = gr.Slider(1, 100, value=prof.default_steps if prof else 30, step=1, label="Steps")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                    faces = gr.Dropdown(list(FACE_MODES), value="every face", label="Faces")
                    color = gr.Dropdown(["wavelet", "adain", "none"], value="wavelet", label="Colour fix")
                    upscale = gr.Slider(1, 4, value=1, step=0.5, label="Upscale (background: "
                                        + ("Real-ESRGAN" if models.upsampler is not None else "Lanczos") + ")")
                    ig = gr.Slider(0, 1, value=prof.default_identity_guidance if prof else 0.05, step=0.01,
                                   label="Identity guidance toward the references (0: off)")
                    cs = gr.Slider(0, 2, value=RestoreSettings.control_strength, step=0.05,
                                   label="Control strength (lower: the prior invents more; higher: closer to the photo)")
                    cleaner = gr.Checkbox(value=True, label="Clean the face first (SwinIR)",
                                          interactive=models.pipeline is not None and models.pipeline.cleaner is not None)
                    fu = gr.Checkbox(value=False, label="Enlarge large faces with Real-ESRGAN before pasting "
                                     "(face upsample)", interactive=models.upsampler is not None, elem_id="face-upsample")
                button = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Before / after", type="filepath", format="png", elem_id="slider")
                clip = gr.Video(label="Restored clip", visible=False, elem_id="clip")
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="Faces: aligned / restored", columns=4, format="png", elem_id="faces")
                download = gr.File(label="Full-resolution PNG", elem_id="download")
        button.click(run, [photo, refs, prompt, negative, gq, ga, steps, seed, faces, color, upscale, cleaner, ig, cs, fu],
                     [slider, gallery, download, status, clip], api_name="restore", concurrency_limit=1)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    demo.mgfr_tmp = root  # removed by serve() at exit
    return demo


def load_models(root: Path, *, detector: str, base, checkpoint, cleaner: str, bg_upsampler: str, device: str,
                precision: str, max_megapixels: float, library: bool = False) -> UiModels:
    """Models for the page, or a UiModels whose ``missing`` says what to fetch (the page still starts)."""
    from mgfr_cli.api import Restorer
    from mgfr_cli.errors import MgfrError

    try:  # the page never downloads 7 GB behind the user's back: offline
        loaded = Restorer.load(root, checkpoint=checkpoint, base=base, cleaner=cleaner, bg_upsampler=bg_upsampler,
                               upscale=2.0 if bg_upsampler != "none" else 1.0, device=device, precision=precision,
                               detector=detector, offline=True, library=library)
    except MgfrError as exc:
        return UiModels(missing=f"{exc} (run `mgfr restore` once, or `mgfr weights fetch ...`, then restart `mgfr ui`)",
                        max_megapixels=max_megapixels)
    return UiModels(loaded.helper, loaded.pipeline, loaded.upsampler, "", max_megapixels)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (systemd, docker, kill) stops the page as Ctrl-C does, cleaning up


def serve(demo, host: str, port: int, share: bool, max_upload_mb: float, block: bool = True):
    import signal
    import threading

    previous = None
    if block and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return demo.launch(server_name=host, server_port=port, share=share, inbrowser=False, quiet=True,
                           max_file_size=int(max_upload_mb * 1024 * 1024), prevent_thread_lock=not block, show_error=True)
    finally:
        if block:
            shutil.rmtree(demo.mgfr_tmp, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

