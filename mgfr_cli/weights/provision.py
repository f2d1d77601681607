"""What a restore run needs, fetched on first use: detector, base, adapter, cleaner, background upsampler.

``plan_restore`` resolves every model a run will use to a file in the model root (or a path the user
gave) and lists what is missing with the manifest entry that provides it. ``provide`` fetches those
entries (verified, resumable: :mod:`weights`) and converts a fetched DiffBIR ControlNet into an adapter
folder, unless the run is offline, in which case the one-line missing-weights error names each file and
the command that gets it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mgfr_cli.errors import ConfigError, WeightsError
from mgfr_cli.files import is_broken_link
from mgfr_cli.weights.files import Entry, Manifest, fetch_entry, read_pins

MGFR_ADAPTER = "mgfr-adapter"
DEFAULT_PUBLIC = "diffbir-v2"  # the public restorer used until an MGFR adapter exists in the model root


def converted_dir(root: Path, entry_name: str) -> Path:
    return root / f"{entry_name}-lca"


def offline_requested(flag: bool) -> bool:
    return flag or any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                       for v in ("MGFR_OFFLINE", "HF_HUB_OFFLINE"))


@dataclass
class RestorePlan:
    root: Path
    detector_file: Path | None
    base: Path
    checkpoint: Path
    cleaner: Path | None
    upsampler: Path | None
    recogniser: Path | None = None  # identity guidance and the reference library
    upsampler_scale: int = 1
    missing: list = field(default_factory=list)  # (path, entry name or None, hint)
    convert: list = field(default_factory=list)  # entry names whose fetched file becomes an adapter folder
    notes: list = field(default_factory=list)  # choices the user should hear about

    def files(self) -> list[Path]:
        """The weights a provided plan restores with: detector, base, the adapter folder (a training run's newest
        checkpoint), cleaner, background upsampler, recogniser (what an output is made with)."""
        from mgfr_cli.model.loading import find_adapter_dir

        return [p for p in (self.detector_file, self.base, find_adapter_dir(self.checkpoint), self.cleaner,
                            self.upsampler, self.recogniser) if p is not None]


def _adapter_config(checkpoint: Path) -> dict | None:
    """The adapter's config.json (what profiles read) without loading the adapter; None when not there yet."""
    from mgfr_cli.model.loading import find_adapter_dir

    try:
        cfg = json.loads((find_adapter_dir(checkpoint) / "config.json").read_text())
    except (WeightsError, OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _adapter_source(checkpoint: Path) -> str | None:
    cfg = _adapter_config(checkpoint)
    return str(cfg.get("source", "mgfr")) if cfg is not None else None


def plan_restore(root: Path, manifest: Manifest, *, detector: str | None, base: Path | None, checkpoint: Path | None,
                 cleaner: str, bg_upsampler: str, upscale: float, offline: bool = False, references: bool = False,
                 identity_guidance: float | None = None, library: bool = False, face_upsample: bool = False
                 ) -> RestorePlan:
    """Every file the run will read, and which of them are missing (with the entry that provides each).

    The recogniser (identity guidance, the reference library) is needed, and fetched when missing, for a
    library, for ``--identity-guidance`` above 0, or for references given to an adapter without a trained
    reference branch; otherwise it is loaded when present (a sidecar may name references) unless guidance is 0."""
    from mgfr_cli.model.cleaner import CLEANERS
    from mgfr_cli.model.profiles import profile_of
    from mgfr_cli.faces.helper import DETECTORS
    from mgfr_cli.model.upsampler import UPSAMPLERS

    missing, convert = [], []

    entries = {e.name: e for e in manifest.entries}

    def need(path: Path, entry: str | None, hint: str):
        files = entries[entry].files if entry in entries else ()
        if not path.exists() or any(is_broken_link(root / f.path) for f in files):
            missing.append((path, entry, hint))  # (a file linked from a Hugging Face cache since moved or cleared)

    det_file = None
    if detector is not None:
        det_file = root / DETECTORS[detector][1]
        need(det_file, detector, f"mgfr weights fetch {detector}")
    base = base or root / "sd21-base"
    if base == root / "sd21-base":
        need(base, "sd21-base", "mgfr weights fetch sd21-base, or --base DIR")
    else:
        need(base, None, "--base: a diffusers folder or a .safetensors file")
    if checkpoint is None:  # an MGFR adapter when there is one, else the public DiffBIR LCA
        checkpoint = root / MGFR_ADAPTER if (root / MGFR_ADAPTER).exists() else converted_dir(root, DEFAULT_PUBLIC)
    source = _adapter_source(checkpoint)
    if source is None:
        if checkpoint == converted_dir(root, DEFAULT_PUBLIC):
            source = DEFAULT_PUBLIC
            original = root / manifest.get(DEFAULT_PUBLIC).files[0].path
            if not original.is_file():
                missing.append((original, DEFAULT_PUBLIC, f"mgfr weights fetch {DEFAULT_PUBLIC}"))
            convert.append(DEFAULT_PUBLIC)
        else:
            there = "there, but not " if Path(checkpoint).exists() else ""  # (a file, a run without a checkpoint yet)
            missing.append((checkpoint, None, f"{there}an adapter folder or `mgfr train` run folder with a checkpoint; "
                                              "or leave --checkpoint out to use the public DiffBIR prior"))
    cleaner_file = None
    if cleaner == "auto":  # what the adapter was trained with (a DiffBIR LCA: on cleaned faces)
        cleaner = profile_of({"source": source}).default_cleaner
    if cleaner != "none":
        if cleaner not in CLEANERS:
            raise ConfigError(f"--cleaner {cleaner!r}: choose auto, none or one of {', '.join(CLEANERS)}")
        entry, file = CLEANERS[cleaner]
        cleaner_file = root / file
        need(cleaner_file, entry, f"mgfr weights fetch {entry}, or --cleaner none")
    up_file, scale, notes = None, 1, []
    if bg_upsampler == "auto":  # --face-upsample wants one at every --upscale (x2 at 1x: faces only, as CodeFormer)
        wanted = max(upscale, 2.0) if face_upsample else upscale
        bg_upsampler = "none" if wanted <= 1 else ("realesrgan-x2" if wanted <= 2 else "realesrgan-x4")
        if bg_upsampler != "none" and offline and not (root / UPSAMPLERS[bg_upsampler][1]).is_file():
            if upscale > 1:  # faces alone (--face-upsample at 1x): said by the run, with the flag's name
                notes.append(f"background resized with Lanczos: {UPSAMPLERS[bg_upsampler][1]} is not in {root} and "
                             f"this run is offline (mgfr weights fetch {UPSAMPLERS[bg_upsampler][0]})")
            bg_upsampler = "none"
    if bg_upsampler != "none":
        if bg_upsampler not in UPSAMPLERS:
            raise ConfigError(f"--bg-upsampler {bg_upsampler!r}: choose auto, none or one of {', '.join(UPSAMPLERS)}")
        entry, file, scale = UPSAMPLERS[bg_upsampler]
        up_file = root / file
        need(up_file, entry, f"mgfr weights fetch {entry}, or --bg-upsampler none")
    from mgfr_cli.model.recogniser import RECOGNISER_FILE

    rec_file = root / RECOGNISER_FILE
    guided = (identity_guidance or 0) > 0 or (identity_guidance is None and references
                                               and not profile_of(_adapter_config(checkpoint)
                                                                  or {"source": source or "mgfr"}).uses_reference)
    recogniser = True if library or guided else (None if identity_guidance != 0 else False)
    if recogniser:
        need(rec_file, "arcface-irse50", "mgfr weights fetch arcface-irse50, or --identity-guidance 0")
    rec = rec_file if recogniser or (recogniser is None and rec_file.is_file()) else None
    return RestorePlan(root, det_file, base, checkpoint, cleaner_file, up_file, rec, scale, missing, convert, notes)


def _size(entry: Entry) -> str:
    sizes = [f.size for f in entry.files]
    if any(s is None for s in sizes):
        known = sum(s for s in sizes if s)
        return f"≥{known / 1e9:.2f} GB" if known else "size not published"
    return f"{sum(sizes) / 1e9:.2f} GB" if sum(sizes) > 1e8 else f"{sum(sizes) / 1e6:.0f} MB"


def provide(plan: RestorePlan, manifest: Manifest, *, offline: bool,
            announce: Callable[[list[tuple[str, str, str]]], None] = lambda rows: None,
            progress: Callable[[str, int, int | None], None] | None = None) -> None:
    """Fetch the missing entries (unless ``offline``) and convert a fetched DiffBIR ControlNet; raise the
    one-line missing-weights error for whatever is still missing."""
    names = list(dict.fromkeys(e for _, e, _ in plan.missing if e is not None))
    fixable = not any(e is None for _, e, _ in plan.missing)
    failure = ""
    if names and fixable:
        from mgfr_cli.weights import hub

        entries = [manifest.get(n) for n in names]
        rows = [(e.name, "found in the Hugging Face cache" if _all_cached(e, hub) else _size(e), e.license)
                for e in entries]
        if not offline and any(not r[1].startswith("found") for r in rows):
            announce(rows)
        failed = set()
        for e in entries:
            try:
                fetch_entry(e, plan.root, allow_unpinned=True, progress=progress, offline=offline)
            except WeightsError as exc:
                failed.add(e.name)
                failure = failure or (f"; {exc}" if "refused" in str(exc) else "" if offline
                                      else f"; automatic download failed: {exc}")
        plan.missing = [m for m in plan.missing if m[1] in failed or not m[0].exists()]
    if not plan.missing:
        for name in plan.convert:
            if not (converted_dir(plan.root, name) / "config.json").is_file():
                convert_entry(manifest.get(name), plan.root, manifest)
        return
    if "refused" in failure:  # a file that is there but wrong: that is the one thing to say
        raise WeightsError(failure[2:])
    why = " (offline: --offline, MGFR_OFFLINE or HF_HUB_OFFLINE is set)" if offline and fixable else failure
    raise WeightsError("missing weights: " + "; ".join(f"{p} ({hint})" for p, _, hint in plan.missing) + why)


def _all_cached(entry: Entry, hub) -> bool:
    """Every file of ``entry`` is in the Hugging Face cache already (nothing to download)."""
    return all(hub.find_cached(entry.sources, f.source_path) is not None for f in entry.files)


def incompatible_hashes(manifest: Manifest, root: Path) -> dict[str, str]:
    """SHA-256 -> entry name of every file the manifest marks incompatible (pinned or recorded on fetch)."""
    pins = read_pins(root)
    out = {}
    for e in manifest.entries:
        if e.incompatible:
            for f in e.files:
                digest = f.sha256 or pins.get(f.path)
                if digest:
                    out[digest] = e.name
    return out


def base_unet_config(root: Path, base: Path | None = None, model: str = "mgfr-sd21") -> dict:
    """The UNet shape an LCA must fit: the base's own unet/config.json, else the architecture config's."""
    from mgfr_cli.configs import load_model_config

    for folder in (base, root / "sd21-base"):
        if folder is not None and (Path(folder) / "unet" / "config.json").is_file():
            return json.loads((Path(folder) / "unet" / "config.json").read_text())
    return dict(load_model_config(model).base["unet"])


def convert_entry(entry: Entry, root: Path, manifest: Manifest, base: Path | None = None) -> Path:
    """The adapter folder made from a fetched entry (``convert: diffbir``)."""
    from mgfr_cli.weights.convert import convert_diffbir

    if entry.convert != "diffbir":
        raise ConfigError(f"{entry.name}: nothing to convert (the manifest gives it no convert: key)")
    return convert_diffbir(root / entry.files[0].path, converted_dir(root, entry.name),
                           unet_config=base_unet_config(root, base), source=entry.name,
                           known_bad=incompatible_hashes(manifest, root), model_root=root)


def restore_components(plan: RestorePlan, *, device: str, dtype, identity_file: Path):
    """The face helper, the pipeline and the background upsampler of a provided plan."""
    from mgfr_cli.faces.helper import FaceHelper
    from mgfr_cli.model.loading import build_pipeline

    detector = None
    if plan.detector_file is not None:
        from mgfr_cli.faces.helper import DETECTORS

        detector = next(k for k, (_, f) in DETECTORS.items() if f == plan.detector_file.name)
    helper = FaceHelper(plan.root, detector, device=device)
    pipeline = build_pipeline(plan.base, plan.checkpoint, identity_path=identity_file, device=device, dtype=dtype,
                              cleaner_path=plan.cleaner, recogniser_path=plan.recogniser)
    upsampler = None
    if plan.upsampler is not None:
        from mgfr_cli.model.upsampler import BackgroundUpsampler

        upsampler = BackgroundUpsampler(plan.upsampler, plan.upsampler_scale, device)
    return helper, pipeline, upsampler
