"""Restoring many photos: inputs -> outputs mirrored under OUT, faces batched across photos.

One bad file never stops the rest: each photo ends as an :class:`Outcome` (restored, skipped, no
face, failed with the reason). Outputs are written atomically and a photo whose output exists is
skipped, so a run that was stopped resumes where it was. The CPU reads, detects and aligns the next
photos in a background thread while the restorer works on the current batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from mgfr_cli.app.claims import Claims
from mgfr_cli.faces.conditions import (ConditionSpec, FaceConditions, FlagOverrides, condition_sources, expand_refs,
                                       read_reference, reference_file_notes, resolve_specs)
from mgfr_cli.errors import STOPPING_WRITE_ERRORS, InputError, MgfrError, OutputError, unexpected
from mgfr_cli.faces.helper import AlignedFace, FaceHelper, FaceSelection, aligned_output
from mgfr_cli.faces.inputs import FAILED, NO_FACE, RESTORED, SKIPPED, InputItem, Outcome, collect_inputs
from mgfr_cli.app.paste import paste_back, upscaled_like
from mgfr_cli.app.summary import row_of, summary_path
from mgfr_cli.app.outputs import (dropped_note, earlier_recipes, earlier_rows, existing_output, output_path,
                                  own_folders, own_outputs, recipe, refuse_outputs_onto_inputs,
                                  remove_stale_temporaries, save_face_crops, skipped_as_done)
from mgfr_cli.faces.io import DEFAULT_MAX_MEGAPIXELS, Photo, format_drops, is_video_file, read_image, write_image
from mgfr_cli.files import Journal, check_output_folder, resolved

# A photo without a face is written all the same (its background: resized by --upscale, Real-ESRGAN when asked),
# so the output folder mirrors the inputs, as GFPGAN's and CodeFormer's do.
NO_FACE_WRITTEN = "no face detected (written without restoring)"


class Restorer(Protocol):
    """The seam between the face pipeline and a restorer: aligned crops in, restored crops out."""

    def restore(self, crops: list[np.ndarray], conditions: list[FaceConditions], seeds: list[int]) -> list[np.ndarray]:
        ...


@dataclass(frozen=True)
class RestoreJob:
    inputs: tuple[str, ...]
    output: Path
    flags: ConditionSpec = ConditionSpec()
    selection: FaceSelection = FaceSelection()
    upscale: float = 1.0
    face_upsample: bool = False  # faces larger in the output than their crop: enlarged by Real-ESRGAN first
    has_aligned: bool = False
    save_faces: bool = False
    suffix: str = ""
    ext: str = "auto"
    overwrite: bool = False
    recursive: bool = False
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    batch_size: int = 8
    seed: int = 0
    shard: tuple[int, int] = (0, 1)  # (this process, number of processes)
    report: bool | None = None  # OUT/index.html review page; None: when the batch has more than one photo
    ref_k: int = 3  # references per face from the library
    ref_threshold: float = 0.3  # least cosine for a library face
    crf: int = 18  # video: H.264 quality (lower is better)
    video_noise: str = "track"  # video: one start noise per track ("track") or per frame ("frame", to compare)
    clip_flags: tuple[str, ...] = ()  # the clip-only flags the user gave (said when there is no clip to use them)
    recipe: str = ""  # the settings outputs depend on (app.outputs.recipe_text): a rerun with others says so


@dataclass
class _Prepared:
    item: InputItem
    target: Path
    photo: Photo | None = None
    faces: list[AlignedFace] = field(default_factory=list)
    conditions: list[FaceConditions] = field(default_factory=list)
    sources: str = ""  # where the conditions came from (flags, sidecar, folder YAML), for the report
    outcome: Outcome | None = None  # set when the photo is already finished (skipped, failed, no face)
    written: np.ndarray | None = None  # the pixels written, for the review page (no decoding them again)
    why: str = ""  # why a photo with faces has none to restore (--min-face-size)


class BatchRestorer:
    """Runs a :class:`RestoreJob`: the face helper on the CPU side, ``restorer`` on the GPU side."""

    def __init__(self, helper: FaceHelper, restorer: Restorer, upsampler=None, judge=None, library=None):
        self.reporter = None  # report.Report while a run writes OUT/index.html
        self.judge = judge  # identity.IdentityEncoder: similarity to the references before/after, or None
        self.library = library  # reference_library.ReferenceLibrary (--ref-library), or None
        self.helper = helper
        self.restorer = restorer
        self.upsampler = upsampler  # upsampler.BackgroundUpsampler for --upscale > 1, or None (Lanczos)
        self.claims = Claims()  # photos this run is restoring (another run into the same folder skips them)
        self.notes: list[str] = []  # said once after the run: flags that did not apply to some inputs
        self.drops: dict[Path, list[str]] = {}  # what --ext's format cannot hold of a photo: said after the run
        self.own_refs: dict[Path, None] = {}  # photos in their own references folder (left out): said after the run
        self.crowded: dict[Path, int] = {}  # reference file -> faces in it (the largest taken): said after the run

    def run(self, job: RestoreJob, on_outcome: Callable[[Outcome], None] = lambda o: None,
            on_total: Callable[[int], None] = lambda n: None) -> list[Outcome]:
        record = summary_path(job.output)[0]  # the folder's summary, and its journal: read once
        earlier = earlier_rows(record)
        items, outcomes = collect_inputs(job.inputs, job.recursive, exclude=job.output,
                                         own=own_outputs(earlier, job.output), own_dirs=own_folders(job.output))
        videos = [it for it in items if is_video_file(it.path)]
        items = [it for it in items if not is_video_file(it.path)]
        if job.clip_flags and not videos:
            self.notes.append(f"{', '.join(job.clip_flags)}: not used (for clips, and there is no clip among the inputs)")
        unused = [flag for flag, on in (("--save-faces", job.save_faces), (f"--ext {job.ext}", job.ext != "auto")) if on]
        if videos and unused:
            self.notes.append(f"{' and '.join(unused)}: not for clips ({len(videos)} here; a clip is written whole, "
                              f"as .mp4)")
        kept, failed = refuse_outputs_onto_inputs(job, items + videos)  # (an output that is another input: failed)
        items, videos, outcomes = [i for i in items if i in kept], [v for v in videos if v in kept], outcomes + failed
        check_output_folder(job.output)
        self.recipes = earlier_recipes(earlier, job.output)  # what earlier runs' outputs were made with
        rank, world = job.shard
        items = items[rank::world]
        for o in outcomes if rank == 0 else []:
            on_outcome(o)
        outcomes = outcomes if rank == 0 else []
        videos = videos[rank::world]
        on_total(len(items) + len(videos) + len(outcomes))
        want_report = job.report if job.report is not None else len(items) + len(videos) + len(outcomes) > 1
        self.reporter = None
        if job.report and world > 1:
            self.notes.append(f"--report: not written by a run over {world} processes (each would rewrite the one page)")
        if want_report and world == 1:  # several processes would each rewrite the one page
            from mgfr_cli.app.report import Report

            self.reporter = Report(job.output)
            self.notes += [f"review page: {self.reporter.note}"] if self.reporter.note else []
            for o in outcomes:
                self.reporter.add(o)
        inputs = {resolved(it.path) for it in items + videos}
        ref_cache: dict[Path, AlignedFace] = {}  # one run's aligned references, by file
        overrides = FlagOverrides(job.flags)  # sidecar settings the flags replaced: said after the run
        written = Journal(record)  # each output's row as it is made: a run stopped before its summary resumes

        def finish(o: Outcome):
            if o.status in (RESTORED, NO_FACE) and o.output is not None:  # what a later run resumes by
                o = replace(o, recipe=recipe(job, o.source, faceless=o.status == NO_FACE))
                written.add(row_of(o))
            if o.status == RESTORED:
                overrides.add(o.source)
            outcomes.append(o)
            on_outcome(o)
            if self.reporter is not None and (o.status != RESTORED or o.tracks):  # photos add their pixels
                self.reporter.add(o)

        pending: list[_Prepared] = []
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgfr-prepare") as pool:
                tasks = (partial(self._prepare, job, it, inputs, ref_cache) for it in items)
                for prep in _prefetch(pool, tasks):
                    if prep.outcome is not None:
                        self.claims.release(prep.item.path)
                        finish(prep.outcome)
                        continue
                    if not prep.faces:  # nothing for the restorer: written now, never held in memory
                        o = self._write(job, prep, [])
                        self.claims.release(prep.item.path)
                        finish(o)
                        continue
                    pending.append(prep)
                    if sum(len(p.faces) for p in pending) >= job.batch_size:
                        for o in self._restore_and_write(job, pending):
                            finish(o)
                        pending = []
                for o in self._restore_and_write(job, pending):
                    finish(o)
            for it in videos:
                from mgfr_cli.app.video import restore_clip

                finish(restore_clip(self, job, it, inputs))
        except BaseException:  # Ctrl-C, a fatal write error: the page as far as the run got, its own error said
            if self.reporter is not None:
                with suppress(Exception):
                    self.reporter.flush()
            raise
        finally:  # also on Ctrl-C and a fatal write error: no claim outlives the run
            self.claims.release_all()
        if self.reporter is not None:
            self.notes += self.reporter.flush()  # (said where the page could not be written to the end)
        self.notes += reference_file_notes(list(self.own_refs), self.crowded)
        self.notes += overrides.notes() + dropped_note(job.ext, [(o.source, self.drops[o.source]) for o in outcomes
                                                                  if o.output is not None and o.source in self.drops])
        return outcomes

    # -- CPU side: read, detect, align, resolve conditions -------------------------------------
    def _prepare(self, job: RestoreJob, item: InputItem, inputs: set[Path], ref_cache: dict) -> _Prepared:
        try:
            done = None if job.overwrite else existing_output(job, item)
            if done is not None:
                return _Prepared(item, done, outcome=skipped_as_done(job, item.path, done, self.recipes))
            photo = read_image(item.path, job.max_megapixels)
            out_mp = photo.width * photo.height * max(job.upscale, 1.0) ** 2 / 1e6
            if out_mp > job.max_megapixels:  # the upscaled output counts too: it is what gets allocated
                raise InputError(f"{item.path}: at --upscale {job.upscale:g} the output is {out_mp:.0f} megapixels, over "
                                 f"--max-megapixels {job.max_megapixels:g}")
            target = output_path(job, item, photo)
            if drops := format_drops(photo, target.suffix):  # --ext jpg on a photo with alpha or 16 bits
                self.drops[item.path] = drops
            if resolved(target) in inputs:
                raise InputError(f"{item.path}: output {target} would overwrite an input; choose another -o or --suffix")
            holder = self.claims.take(item.path, target)
            if holder is not None:
                return _Prepared(item, target, outcome=Outcome(item.path, SKIPPED, holder))
            done = None if job.overwrite else existing_output(job, item)  # written since the first look
            if done is not None:
                return _Prepared(item, done, outcome=skipped_as_done(job, item.path, done, self.recipes))
            rgb = photo.rgb8()
            if job.has_aligned:
                faces, total = [self.helper.as_aligned(rgb, item.path)], 1
            else:
                faces, total = self.helper.align_faces(rgb, job.selection, item.path)
            if not faces:  # written all the same, as its background (GFPGAN's and CodeFormer's way): see _write
                return _Prepared(item, target, photo, why=job.selection.none_kept(total))
            specs = resolve_specs(item.path, job.flags, total)  # by each face's own number (kept or not)
            conditions = [self._conditions(f, specs[f.index], job, ref_cache, item.path) for f in faces]
            return _Prepared(item, target, photo, faces, conditions, condition_sources(item.path, job.flags))
        except MgfrError as exc:
            return _Prepared(item, item.path, outcome=Outcome(item.path, FAILED, str(exc)))
        except Exception as exc:  # noqa: BLE001 - in a batch, one file's surprise must not stop the rest
            return _Prepared(item, item.path, outcome=Outcome(item.path, FAILED, unexpected(item.path, exc)))

    def _conditions(self, face: AlignedFace, spec: ConditionSpec, job: RestoreJob, cache: dict,
                    source: Path | None = None) -> FaceConditions:
        """References from flags or sidecars win; a face with none set gets the library's matches, if any (never a
        face of its own photo, ``source``, when the library holds it)."""
        if spec.refs is None and self.library is not None:
            refs, found = self.library.find(face.crop, job.ref_k, job.ref_threshold, skip=[source] if source else ())
            return FaceConditions(spec.prompt, spec.negative_prompt, refs, found or ("no match",))
        return FaceConditions(spec.prompt, spec.negative_prompt, self._references(spec, job, cache, source))

    def _references(self, spec: ConditionSpec, job: RestoreJob, cache: dict, source: Path | None = None
                    ) -> tuple[AlignedFace, ...]:
        """The aligned references of ``spec``; a references folder holding ``source`` (the photo being restored) gives
        it the others (said after the run)."""
        refs, left_out = [], []
        files = expand_refs(spec.refs, source, left_out)  # (listed once a face)
        if left_out:
            self.own_refs[source] = None
        for path in files:
            key = resolved(path)
            if key not in cache:
                rgb = read_reference(path, job.max_megapixels)
                if job.has_aligned:  # aligned inputs: their references are aligned crops too
                    cache[key] = self.helper.as_aligned(rgb, path)
                    refs.append(cache[key])
                    continue
                faces, found = self.helper.align_faces(rgb, FaceSelection(largest_face=True), path)
                if not faces:
                    raise InputError(f"reference {path}: no face detected")
                cache[key], self.crowded[path] = faces[0], found  # (a group photo: said after the run)
            refs.append(cache[key])
        return tuple(refs)

    # -- GPU side: restore all pending faces, then paste and write each photo -------------------
    def _restore_and_write(self, job: RestoreJob, pending: list[_Prepared]) -> Iterator[Outcome]:
        """Each photo's outcome as soon as it is written (the run journals it before the next is written)."""
        if not pending:
            return
        crops = [f.to_restore for p in pending for f in p.faces]
        conds = [c for p in pending for c in p.conditions]
        seeds = [job.seed + f.index for p in pending for f in p.faces]
        try:
            restored = restore_in_batches(self.restorer, crops, conds, seeds, job.batch_size)
        except MgfrError as exc:
            for p in pending:
                self.claims.release(p.item.path)
            yield from (Outcome(p.item.path, FAILED, str(exc)) for p in pending)
            return
        i = 0
        for p in pending:
            n = len(p.faces)
            o = self._write(job, p, restored[i : i + n])
            o = self._record_references(o, p, restored[i : i + n])
            self.claims.release(p.item.path)
            if self.reporter is not None and o.status == RESTORED:
                ident = {r["face"]: r for r in o.identity}
                self.reporter.add(o, p.photo, p.faces, restored[i : i + n],
                                  [_describe(c, p, ident.get(f.index)) for f, c in zip(p.faces, p.conditions)],
                                  after=p.written)
                p.written = None
            i += n
            yield o

    def _record_references(self, o: Outcome, p: _Prepared, restored: list[np.ndarray]) -> Outcome:
        """The outcome with what the library found per face and the judge's similarities before/after."""
        if o.status != RESTORED:
            return o
        library = library_rows((f.index for f in p.faces), p.conditions)
        identity = ()
        if self.judge is not None and any(c.references for c in p.conditions):
            from mgfr_cli.faces.identity import similarity_report

            identity = similarity_report(self.judge, p.faces, p.conditions, restored)
        return replace(o, identity=identity, library=library)

    def _write(self, job: RestoreJob, p: _Prepared, restored: list[np.ndarray]) -> Outcome:
        remove_stale_temporaries(p.target)
        try:
            if job.has_aligned:  # the face is the photo: at its size times --upscale
                face = aligned_output(restored[0], p.photo.width, p.photo.height, job.upscale)
                pixels = upscaled_like(p.photo, face, (face.shape[1], face.shape[0]))
            else:
                pixels = paste_back(self.helper, self.upsampler, p.photo, p.faces, restored, job.upscale,
                                    job.face_upsample)
            if p.photo.gray_alpha:  # restored in colour, written back in the photo's own form
                from mgfr_cli.faces.io import as_gray_alpha

                pixels = as_gray_alpha(pixels)
            write_image(p.target, pixels, meta=p.photo.meta.scaled(pixels.shape[1] / p.photo.width))
            p.written = pixels if self.reporter is not None else None  # held only for the page
            kept = save_face_crops(job, p.item, p.faces, restored) if job.save_faces else ""
        except OSError as exc:
            if exc.errno in STOPPING_WRITE_ERRORS:  # the folder's: no later photo could be written
                raise OutputError(f"{job.output}: cannot write outputs ({exc.strerror}); stopped, inputs untouched, "
                                  f"finished outputs kept") from None
            return Outcome(p.item.path, FAILED, f"cannot write {p.target}: {exc.strerror or exc}")
        except MgfrError as exc:
            return Outcome(p.item.path, FAILED, f"cannot write {p.target}: {exc}")
        except MemoryError:
            return Outcome(p.item.path, FAILED, f"out of memory while pasting at --upscale {job.upscale:g}")
        except Exception as exc:  # noqa: BLE001 - cv2 reports allocation failures as cv2.error; one photo's surprise
            if "memory" in str(exc).lower():  # while writing must not stop the rest either (as in _prepare)
                return Outcome(p.item.path, FAILED, f"out of memory while pasting at --upscale {job.upscale:g}")
            return Outcome(p.item.path, FAILED, unexpected(p.target, exc, "cannot write: "))
        if not p.faces:
            why = f"{p.why} (written without restoring)" if p.why else NO_FACE_WRITTEN
            return Outcome(p.item.path, NO_FACE, "; ".join(filter(None, (why, p.photo.note))), p.target)
        return Outcome(p.item.path, RESTORED, "; ".join(filter(None, (p.photo.note, kept))), p.target, len(p.faces))


def library_rows(indices, conditions) -> tuple:
    """What the reference library found for each face (or track) that asked it, for the summary and the page."""
    return tuple({"face": i, "matches": [{"file": str(m.file), "similarity": round(m.similarity, 4)}
                                         for m in c.library if not isinstance(m, str)]}
                 for i, c in zip(indices, conditions) if c.library)


def _describe(c: FaceConditions, p: "_Prepared", identity: dict | None = None) -> dict:
    out = {"prompt": c.prompt, "negative_prompt": c.negative_prompt,
           "refs": ", ".join(r.source.name for r in c.references if r.source is not None), "from": p.sources}
    if identity is not None:
        out["identity"] = f"{identity['before']:.3f} -> {identity['after']:.3f}"
    if c.library:
        out["library"] = ", ".join(f"{m.file.name} ({m.similarity:.2f})" for m in c.library if not isinstance(m, str)) \
            or "no match in the library"
    return out


def _prefetch(pool: ThreadPoolExecutor, tasks: Iterator[Callable], depth: int = 2):
    """Yield each task's result in order, keeping up to ``depth`` tasks running ahead."""
    futures = []
    for task in tasks:
        futures.append(pool.submit(task))
        if len(futures) > depth:
            yield futures.pop(0).result()
    for f in futures:
        yield f.result()


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def restore_in_batches(restorer: Restorer, crops, conditions, seeds, batch_size: int) -> list[np.ndarray]:
    """Restore in chunks of ``batch_size``; on out-of-memory halve the chunk and retry (down to one face)."""
    out: list[np.ndarray] = []
    i, size = 0, max(1, batch_size)
    while i < len(crops):
        chunk = slice(i, i + size)
        try:
            out += restorer.restore(crops[chunk], conditions[chunk], seeds[chunk])
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            _empty_cache()
            if size == 1:
                raise InputError("out of GPU memory even for one face (free memory or use --device cpu)") from None
            size //= 2
            if getattr(restorer, "pad_to", 0) > size:
                restorer.pad_to = size  # a compiled restorer pads batches: pad to the smaller size from now on
            continue
        i += size
    return out


def _empty_cache():
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
