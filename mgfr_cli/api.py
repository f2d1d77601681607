"""mgfr's Python API: load once, restore many.

    from mgfr_cli import Restorer

    restorer = Restorer.load()                      # the model root: --model-root / $MGFR_HOME / weights/
    result = restorer.restore("photo.jpg", prompt="brown eyes", refs=["ref/"])
    result.image.save("restored.png")               # a PIL image in, a PIL image out; arrays give arrays
    for face in result.faces:
        print(face.index, face.box, face.identity)
    restorer.restore_files(["photos/", "clip.mp4"], "out/")   # what `mgfr restore photos/ clip.mp4 -o out/` does

``Restorer.load`` fetches what is missing on first use (unless ``offline``), exactly as ``mgfr restore`` does;
the CLI and the web page load their models through it. Errors are the exceptions the CLI turns into one-line
messages (:mod:`mgfr_cli.errors`). Arrays are ``(H, W, 3)`` uint8 RGB (or gray, gray+alpha, RGBA, uint16); the
restored image comes back in the input's form (gray, alpha, 16 bits kept; a PIL image upright, as a file's EXIF
orientation turns it, with its colour profile, EXIF and XMP in ``info``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mgfr_cli.files import resolved


@dataclass
class FaceResult:
    index: int  # left to right, as `mgfr align` numbers faces
    box: tuple  # x1, y1, x2, y2 in the input image
    aligned: np.ndarray  # the 512 crop that was restored
    restored: np.ndarray  # the restored 512 crop (has_aligned: at the square input's own size)
    references: list[str] = field(default_factory=list)  # where each reference came from
    identity: dict | None = None  # the judge's similarity to the references: {"before", "after"} (w600k present)
    library: list[dict] = field(default_factory=list)  # what a reference library matched: {"file", "similarity"}


@dataclass
class RestoreResult:
    image: Any  # the restored image, of the input's kind (numpy array or PIL image)
    faces: list[FaceResult]
    notes: list[str] = field(default_factory=list)  # what the caller should know (references not used, ...)


@dataclass
class FilesResult:
    outcomes: list  # per input file, as mgfr-summary.json's rows: source, status, detail, output, faces, tracks...
    notes: list[str] = field(default_factory=list)  # what `mgfr restore` would have said (options not used, ...)
    summary: Path | None = None  # the summary written into the output folder


class Restorer:
    """The models of a restore (detector, base + adapter, cleaner, upsampler, recogniser, judge), loaded once."""

    def __init__(self, helper, pipeline, upsampler=None, judge=None, notes: Sequence[str] = (),
                 bg_upsampler: str = "auto"):
        self.helper, self.pipeline, self.upsampler, self.judge = helper, pipeline, upsampler, judge
        self.notes = list(notes)
        self.bg_upsampler = bg_upsampler  # what load() was asked for: "none" means Lanczos by choice
        self.weight_files: list[Path] = []  # load(): every weights file used (what ``models()`` names)
        self._weights = ""  # their fingerprint, read on first use

    @classmethod
    def load(cls, model_root: str | Path | None = None, *, checkpoint=None, base=None, cleaner: str = "auto",
             bg_upsampler: str = "auto", upscale: float = 1.0, device: str = "auto", precision: str = "auto",
             detector: str | None = "retinaface_resnet50", offline: bool = False, references: bool = False,
             identity_guidance: float | None = None, library: bool = False, face_upsample: bool = False, announce=None,
             progress=None) -> "Restorer":
        """Resolve, fetch (unless ``offline``) and load every model a restore needs. ``detector=None``: inputs are
        aligned crops. ``references``/``library``: the run will use references (the recogniser is fetched)."""
        from mgfr_cli.app.options import Device, resolve_device
        from mgfr_cli.faces.identity import ARCFACE_FILE, IdentityEncoder
        from mgfr_cli.weights.files import load_manifest, resolve_root
        from mgfr_cli.weights.provision import offline_requested, plan_restore, provide, restore_components

        dev, dtype = resolve_device(Device(device), precision)
        root = resolve_root(Path(model_root) if model_root is not None else None)
        manifest = load_manifest()
        offline = offline_requested(offline)
        plan = plan_restore(root, manifest, detector=detector, base=Path(base) if base else None,
                            checkpoint=Path(checkpoint) if checkpoint else None, cleaner=cleaner,
                            bg_upsampler=bg_upsampler, upscale=upscale, offline=offline, references=references,
                            identity_guidance=identity_guidance, library=library, face_upsample=face_upsample)
        provide(plan, manifest, offline=offline, announce=announce or (lambda rows: None), progress=progress)
        helper, pipeline, upsampler = restore_components(plan, device=dev, dtype=dtype, identity_file=root / ARCFACE_FILE)
        if upsampler is not None:
            upsampler.chosen = bg_upsampler != "auto"  # by name: it cleans the background at every upscale
        judge = IdentityEncoder(root / ARCFACE_FILE, dev) if (root / ARCFACE_FILE).is_file() else None
        restorer = cls(helper, pipeline, upsampler, judge, plan.notes + pipeline.notes, bg_upsampler)
        restorer.weight_files = plan.files() + ([root / ARCFACE_FILE] if pipeline.identity else [])
        return restorer

    def models(self) -> str:
        """What makes this Restorer's outputs: the adapter's kind and cleaner in words, and the weights used (a
        run's recipe: another checkpoint, detector or upsampler is another recipe). Read when first asked for, not
        at load: only runs that record their outputs need it."""
        from mgfr_cli.weights.files import fingerprint

        if self.weight_files and not self._weights:
            self._weights = fingerprint(self.weight_files)
        return f"{self.pipeline.models()}; weights {self._weights or 'as built'}"

    def settings(self, *, steps=None, scheduler=None, guidance_quality=None, guidance_attribute: float = 2.0,
                 identity_guidance=None, color_fix: str = "wavelet", seed: int = 0, start_from: str = "noise",
                 control_strength: float = 1.0):
        """:class:`RestoreSettings` with this adapter's defaults for whatever is left ``None``."""
        from mgfr_cli.model.pipeline import RestoreSettings

        prof = self.pipeline.profile
        settings = RestoreSettings(
            steps=steps or prof.default_steps, scheduler=scheduler or prof.default_scheduler,
            guidance_quality=prof.default_guidance if guidance_quality is None else guidance_quality,
            guidance_attribute=guidance_attribute, color_fix=color_fix, seed=seed, start_from=start_from,
            control_strength=control_strength,
            identity_guidance=prof.default_identity_guidance if identity_guidance is None else identity_guidance)
        settings.check()
        return settings

    def restore(self, image, *, prompt: str | None = None, negative_prompt: str | None = None, refs: Sequence = (),
                library=None, ref_k: int | None = None, ref_threshold: float | None = None,
                seed: int = 0, upscale: float = 1.0, has_aligned: bool = False, face_index: int | None = None,
                largest_face: bool = False, only_center_face: bool = False, batch_size: int = 8,
                face_upsample: bool = False, **sampling) -> RestoreResult:
        """Restore every face of ``image`` (a path, a numpy array or a PIL image) and paste them back.
        ``refs``: paths (files or folders), arrays or PIL images of the same person; without them, each face
        asks ``library`` (:meth:`open_library`) for its ``ref_k`` (3) best matches of at least ``ref_threshold``
        (0.3); ``batch_size`` faces at a time (halved on out-of-memory, as ``mgfr restore`` does); ``face_upsample``:
        faces larger in the output than their crop are enlarged by Real-ESRGAN (load with ``face_upsample=True``);
        ``sampling``: the keyword arguments of :meth:`settings` (steps, scheduler, identity_guidance, ...)."""
        from mgfr_cli.app.batch import restore_in_batches
        from mgfr_cli.app.paste import paste_back, upscaled_like
        from mgfr_cli.errors import InputError
        from mgfr_cli.faces.conditions import FaceConditions, reference_file_notes
        from mgfr_cli.faces.helper import FaceSelection, aligned_output
        from mgfr_cli.model.pipeline import DiffusionRestorer

        notes = _library_options(library, ref_k, ref_threshold, refs) + self._background(upscale, has_aligned,
                                                                                   face_upsample)
        notes += _yaml_beside(image)
        photo, kind = _as_photo(image)  # restored in colour, returned in its own form (gray, alpha, 16 bit)
        if photo.note:  # what it is restored without (frames after the first, a motion photo's clip), as the CLI says
            notes.append(f"{image if kind == 'path' else 'the image'}: {photo.note}")
        rgb = photo.rgb8()
        settings = self.settings(seed=seed, **sampling)
        if not 0 < upscale < float("inf"):
            raise InputError(f"upscale must be a finite number above 0, got {upscale}")
        if has_aligned:
            unused = [k for k, v in (("face_index", face_index is not None), ("largest_face", largest_face),
                                     ("only_center_face", only_center_face)) if v]
            if unused:
                notes.append(f"{', '.join(unused)}: not used with has_aligned (the image is one aligned face)")
            faces = [self.helper.as_aligned(rgb)]
        else:
            faces = self.helper.detect_and_align(rgb, FaceSelection(only_center_face=only_center_face,
                                                                    largest_face=largest_face, face_index=face_index))
        if not faces:  # the image as a restored one would be around its faces: at its size times upscale
            background = paste_back(self.helper, self.upsampler, photo, [], [], upscale)
            return RestoreResult(_like(background, photo, kind), [], notes + ["no face detected"])
        path = Path(image) if isinstance(image, (str, Path)) else None
        left_out: list = []
        given = _expand(refs, path, left_out)  # a references folder holding the photo gives it the others
        crowded: dict = {}  # a reference holding several faces (the largest taken): said
        references = tuple(self._reference(r, has_aligned, crowded) for r in given)
        notes += reference_file_notes([path] if left_out else [], crowded)
        conditions = [FaceConditions(prompt, negative_prompt, references) if references or library is None else
                      FaceConditions(prompt, negative_prompt, *library.find(
                          f.crop, ref_k or 3, 0.3 if ref_threshold is None else ref_threshold,
                          skip=[image] if isinstance(image, (str, Path)) else ()))  # not its own reference
                      for f in faces]
        restorer = DiffusionRestorer(self.pipeline, settings)  # what the faces used: the CLI's tally
        images = restore_in_batches(restorer, [f.to_restore for f in faces], conditions, [seed + f.index for f in faces],
                                    batch_size)
        if has_aligned:  # the face is the image: at its size times upscale
            face = aligned_output(images[0], photo.width, photo.height, upscale)
            pixels = upscaled_like(photo, face, (face.shape[1], face.shape[0]))
        else:
            pixels = paste_back(self.helper, self.upsampler, photo, faces, images, upscale, face_upsample)
        judged = {}
        if self.judge is not None and any(c.references for c in conditions):
            from mgfr_cli.faces.identity import similarity_report

            judged = {r["face"]: r for r in similarity_report(self.judge, faces, conditions, images)}
        notes += _idle_notes(sampling, restorer)
        if restorer.ignored:
            notes.append(f"references not used: the {self.pipeline.profile.source} adapter has no trained reference "
                         f"branch and identity guidance is off")
        results = [FaceResult(f.index, tuple(float(v) for v in (f.box or (0, 0, 0, 0))), f.crop, r,
                              [str(x.source) if x.source is not None else "(array)" for x in c.references],
                              {k: judged[f.index][k] for k in ("before", "after")} if f.index in judged else None,
                              [{"file": str(m.file), "similarity": round(m.similarity, 4)} for m in c.library])
                   for f, r, c in zip(faces, images, conditions)]
        return RestoreResult(_like(pixels, photo, kind), results, notes)

    def open_library(self, folder: str | Path, cache: str | Path | None = None, max_megapixels: float = 100.0):
        """A reference library (``--ref-library``): every face of the photos in ``folder`` (any layout) found and
        embedded once, cached beside them in ``.mgfr-library/`` (in ``cache`` when the folder is read-only;
        default: a folder of the system's temporary directory). Load with ``library=True`` (the recogniser). What
        its refresh did is ``library.update`` (faces embedded, photos unreadable, a cache that could not be saved)."""
        import hashlib
        import tempfile

        from mgfr_cli.faces.reference_library import library_of

        tag = hashlib.sha1(str(resolved(folder)).encode("utf-8", "surrogateescape")).hexdigest()[:12]
        library = library_of(Path(folder), self.helper, self.pipeline.recogniser,
                             Path(cache) if cache else Path(tempfile.gettempdir()) / f"mgfr-library-{tag}", max_megapixels)
        library.refresh()
        return library

    def restore_files(self, inputs: Sequence[str | Path], output: str | Path, *, prompt: str | None = None,
                      negative_prompt: str | None = None, refs: Sequence[str | Path] = (), library=None,
                      ref_k: int | None = None, ref_threshold: float | None = None, seed: int = 0,
                      on_outcome=None, **options) -> FilesResult:
        """What ``mgfr restore INPUTS -o OUTPUT`` does, photos and clips: the input tree mirrored into ``output``,
        inputs never overwritten, finished outputs skipped (a stopped run resumes), sidecar YAMLs read, faces of
        several photos batched, ``mgfr-summary.json`` merged. ``options``: :class:`~mgfr_cli.app.batch.RestoreJob`'s
        fields (upscale, recursive, overwrite, suffix, ext, save_faces, batch_size, report, crf, video_noise, ...)
        and :meth:`settings`' (steps, identity_guidance, ...). ``on_outcome(outcome)`` hears each file as it ends."""
        import inspect
        from dataclasses import fields, replace

        from mgfr_cli.app.batch import BatchRestorer, RestoreJob
        from mgfr_cli.app.outputs import recipe_text
        from mgfr_cli.app.summary import summary_path, write_summary
        from mgfr_cli.faces.conditions import ConditionSpec
        from mgfr_cli.faces.helper import FaceSelection
        from mgfr_cli.model.pipeline import DiffusionRestorer

        job_keys = {f.name for f in fields(RestoreJob)} - {"inputs", "output", "flags", "seed", "shard", "ref_k",
                                                           "ref_threshold", "clip_flags", "selection"}
        picks = {f.name for f in fields(FaceSelection)}  # face_index, largest_face, ...: as restore() takes them
        unknown = set(options) - job_keys - picks - set(inspect.signature(self.settings).parameters)
        if unknown:
            raise TypeError(f"restore_files() got unknown options: {', '.join(sorted(unknown))}")
        notes = _library_options(library, ref_k, ref_threshold, refs) + self._background(
            options.get("upscale", 1.0), options.get("has_aligned", False), options.get("face_upsample", False))
        sampling = {k: v for k, v in options.items() if k not in job_keys | picks}
        flags = ConditionSpec(prompt=prompt, negative_prompt=negative_prompt, refs=tuple(Path(r) for r in refs) or None)
        settings = self.settings(seed=seed, **sampling)
        selection = FaceSelection(**{k: v for k, v in options.items() if k in picks})
        job = RestoreJob(inputs=tuple(str(i) for i in inputs), output=Path(output), flags=flags, seed=seed,
                         ref_k=ref_k or 3, ref_threshold=0.3 if ref_threshold is None else ref_threshold,
                         clip_flags=tuple(k for k in ("crf", "video_noise") if k in options), selection=selection,
                         **{k: v for k, v in options.items() if k in job_keys})
        job = replace(job, recipe=recipe_text(settings, self.models(), flags, job.upscale, selection,
                                              job.has_aligned, library.folder if library else None, job.ref_k,
                                              job.ref_threshold, job.face_upsample))
        restorer = DiffusionRestorer(self.pipeline, settings)
        batch = BatchRestorer(self.helper, restorer, self.upsampler, self.judge, library)
        outcomes = batch.run(job, on_outcome or (lambda o: None))
        path, note = summary_path(job.output)
        write_summary(path, outcomes, merge=True)
        notes += batch.notes + ([note] if note else []) + _idle_notes(sampling, restorer)
        return FilesResult(outcomes, notes, path)

    def _background(self, upscale, has_aligned: bool, face_upsample: bool = False) -> list[str]:
        """Said when ``upscale`` asks for an upsampled background that this Restorer did not load, and when
        ``face_upsample`` cannot act (no Real-ESRGAN loaded, or an aligned input)."""
        from mgfr_cli.app.paste import face_upsample_unused

        notes = []
        if isinstance(upscale, (int, float)) and upscale > 1 and not has_aligned and self.upsampler is None \
                and self.bg_upsampler != "none":
            notes.append(f"upscale {upscale:g}: the background was resized with Lanczos, not upsampled (Real-ESRGAN "
                         f"is loaded by Restorer.load(upscale={upscale:g}), as mgfr restore --upscale does)")
        unused = face_upsample_unused(self.upsampler, has_aligned) if face_upsample else ""
        return notes + ([f"face_upsample: {unused}"] if unused else [])

    def _reference(self, ref, aligned: bool, crowded: dict):
        from mgfr_cli.errors import InputError
        from mgfr_cli.faces.helper import FaceSelection

        from mgfr_cli.faces.conditions import read_reference

        source = Path(ref) if isinstance(ref, (str, Path)) else None
        rgb = read_reference(source) if source is not None else _as_photo(ref)[0].rgb8()
        if aligned:
            return self.helper.as_aligned(rgb, source)
        faces, crowded[source or Path("(array)")] = self.helper.align_faces(rgb, FaceSelection(largest_face=True), source)
        if not faces:
            raise InputError(f"reference {source or '(array)'}: no face detected")
        return faces[0]


def _idle_notes(sampling: dict, restorer) -> list[str]:
    """The guidance keywords given that no face could act on (:meth:`DiffusionRestorer.idle`), with why; the words of
    a prompt past what the text encoder reads."""
    from mgfr_cli.model.prompts import cut_notes

    idle = restorer.idle()
    said = {"identity_guidance": f"identity_guidance: not used ({idle.get('identity_guidance')}"
                                 + (": give refs or a library)" if not restorer.referenced else ")"),
            "guidance_attribute": "guidance_attribute: not used (it steers away from a negative_prompt, and none was "
                                  "given)"}
    return [said[k] for k in said if k in sampling and k in idle] + cut_notes(restorer)


def _yaml_beside(image) -> list[str]:
    """A photo given by path with a sidecar or folder ``mgfr.yaml``: restore() takes its conditions from its
    arguments only (``restore_files`` reads YAMLs, as ``mgfr restore`` does): said, not passed over."""
    from mgfr_cli.faces.conditions import FOLDER_YAML, sidecar_path

    if not isinstance(image, (str, Path)) or not Path(image).is_file():
        return []
    found = [p for p in (sidecar_path(Path(image)), Path(image).parent / FOLDER_YAML) if p is not None and p.is_file()]
    return [f"{', '.join(map(str, found))}: not read by restore(), which takes prompts and references from its "
            f"arguments (restore_files() reads YAMLs, as mgfr restore does)"] if found else []


def _library_options(library, ref_k, ref_threshold, refs) -> list[str]:
    named = [k for k, v in (("ref_k", ref_k), ("ref_threshold", ref_threshold)) if v is not None]
    if library is not None and refs is not None and len(refs):  # refs win for every face: the library is never asked
        return [f"{', '.join(['library'] + named)}: not used with refs (they give every face its references; a "
                f"library serves faces that have none)"]
    return [f"{', '.join(named)}: not used without a library"] if named and library is None else []


def _expand(refs, photo: Path | None = None, left_out: list | None = None) -> list:
    from mgfr_cli.faces.conditions import expand_refs

    out = []
    for r in refs or ():
        out += list(expand_refs((Path(r),), photo, left_out)) if isinstance(r, (str, Path)) else [r]
    return out


def _as_photo(image):
    """The :class:`Photo` of a path (read as ``mgfr restore`` reads it), an array or a PIL image, and its kind."""
    from mgfr_cli.faces.io import photo_of, read_image

    if isinstance(image, (str, Path)):
        return read_image(image), "path"
    if isinstance(image, np.ndarray) or hasattr(image, "convert"):
        return photo_of(image), "array" if isinstance(image, np.ndarray) else "pil"
    raise TypeError(f"an image is a path, a numpy array or a PIL image, not {type(image).__name__}")


def _like(pixels: np.ndarray, photo, kind: str):
    """The restored image in the input's form and kind: gray+alpha back to two channels; a PIL image carries the
    input's colour profile, EXIF (orientation 1: upright), XMP, density (scaled with the size) and text (a PNG's
    chunks, a JPEG's ``Comment``) in its ``info``."""
    from mgfr_cli.faces.io import as_gray_alpha

    if photo.gray_alpha:
        pixels = as_gray_alpha(pixels)
    if kind != "pil":
        return pixels
    from PIL import Image

    out = Image.fromarray(pixels)
    out.info.update(photo.meta.scaled(pixels.shape[1] / photo.width).pil_info(pixels))
    return out
