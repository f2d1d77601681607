"""Per-face conditions from flags and YAML sidecars: prompts and reference images.

Where a setting comes from, highest first (documented in the README):

1. command-line flags (``--prompt``, ``--negative-prompt``, ``--ref``);
2. the photo's sidecar ``<photo stem>.yaml``: its ``faces: {index: {...}}`` entry, then its top level;
3. the folder's ``mgfr.yaml`` (defaults for every photo in that folder);
4. built-in defaults (no attributes, no references).

Each key is resolved on its own, so a sidecar may set only ``refs`` and keep the folder's prompt.
Relative paths in a YAML resolve against that YAML's folder; on the command line, against the
current folder. Faces are indexed left to right, as ``mgfr align`` reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mgfr_cli.configs import check_keys, expect_type, read_yaml
from mgfr_cli.errors import ConfigError, InputError
from mgfr_cli.faces.io import DEFAULT_MAX_MEGAPIXELS, is_image_file, is_video_file, read_image, same_photo
from mgfr_cli.files import is_file_or_link, resolved, why_missing

FOLDER_YAML = "mgfr.yaml"
_KEYS = {"prompt", "negative_prompt", "refs"}


@dataclass(frozen=True)
class ConditionSpec:
    """Conditions as written by the user: text, and reference paths not yet read."""

    prompt: str | None = None
    negative_prompt: str | None = None
    refs: tuple[Path, ...] | None = None  # None: not set here; () : explicitly no references

    def over(self, lower: "ConditionSpec") -> "ConditionSpec":
        """This spec, with the keys it leaves unset taken from ``lower``."""
        return ConditionSpec(
            prompt=self.prompt if self.prompt is not None else lower.prompt,
            negative_prompt=self.negative_prompt if self.negative_prompt is not None else lower.negative_prompt,
            refs=self.refs if self.refs is not None else lower.refs,
        )


@dataclass(frozen=True)
class FaceConditions:
    """What the restorer gets for one face: attribute text and aligned reference faces."""

    prompt: str | None = None  # attribute words, put into the prompt template
    negative_prompt: str | None = None  # the negative-attribute prompt
    references: tuple = field(default=())  # AlignedFace crops of the same person
    library: tuple = field(default=())  # reference_library.Match of each reference the library found


@dataclass(frozen=True)
class SidecarConditions:
    top: ConditionSpec
    faces: dict  # face index -> ConditionSpec


def _parse_spec(data: dict, where: str, base_dir: Path) -> ConditionSpec:
    check_keys(data, _KEYS, where)
    prompt = data.get("prompt")
    negative = data.get("negative_prompt")
    if prompt is not None:
        expect_type(prompt, str, where, "prompt")
    if negative is not None:
        expect_type(negative, str, where, "negative_prompt")
    refs = data.get("refs")
    if refs is not None:
        if isinstance(refs, str):
            refs = [refs]
        expect_type(refs, list, where, "refs")
        for r in refs:
            expect_type(r, str, where, "refs")
        refs = tuple(base_dir / r for r in refs)
        for r in refs:
            if not r.exists():
                raise ConfigError(f"{where}: key 'refs': {r}: {why_missing(r)}")
    return ConditionSpec(prompt=prompt, negative_prompt=negative, refs=refs)


def read_sidecar(path: Path, allow_faces: bool = True) -> SidecarConditions:
    """Parse and validate a sidecar or folder YAML; errors name the file and the key."""
    data = read_yaml(path)
    allowed = _KEYS | ({"faces", "tracks"} if allow_faces else set())  # tracks: a video's people, as they appear
    check_keys(data, allowed, str(path))
    if "faces" in data and "tracks" in data:
        raise ConfigError(f"{path}: keys 'faces' and 'tracks' name the same people (faces of a photo, tracks of a "
                          f"clip): give one of them")
    faces_data = data.pop("faces", None) or data.pop("tracks", None) or {}
    expect_type(faces_data, dict, str(path), "faces")
    top = _parse_spec(data, str(path), path.parent)
    faces = {}
    for key, value in faces_data.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise ConfigError(f"{path}: key 'faces': {key!r} is not a face index (0, 1, 2 ... left to right)")
        where = f"{path}: faces.{key}"
        expect_type(value, dict, str(path), f"faces.{key}")
        faces[key] = _parse_spec(value, where, path.parent)
    return SidecarConditions(top=top, faces=faces)


def sidecar_path(photo: Path) -> Path | None:
    """``<photo stem>.yaml``; never the folder's ``mgfr.yaml`` (a photo named ``mgfr.jpg`` has no sidecar of
    its own: that file is the folder's defaults, for every photo there)."""
    for ext in (".yaml", ".yml"):
        p = photo.with_suffix(ext)
        if is_file_or_link(p) and p.name != FOLDER_YAML:
            return p
    return None


def condition_sources(photo: Path, flags: ConditionSpec) -> str:
    """Where a photo's conditions come from, for the review page: flags, its sidecar, the folder's YAML."""
    found = []
    if any(v is not None for v in (flags.prompt, flags.negative_prompt, flags.refs)):
        found.append("flags")
    side = sidecar_path(photo)
    if side is not None:
        found.append(side.name)
    if is_file_or_link(photo.parent / FOLDER_YAML):
        found.append(f"{photo.parent.name}/{FOLDER_YAML}")
    return ", ".join(found) or "defaults"


def resolve_specs(photo: Path, flags: ConditionSpec, num_faces: int) -> list[ConditionSpec]:
    """One spec per face of ``photo``, merged by the precedence in the module docstring."""
    folder_yaml = photo.parent / FOLDER_YAML
    folder = read_sidecar(folder_yaml, allow_faces=False).top if is_file_or_link(folder_yaml) else ConditionSpec()
    side_path = sidecar_path(photo)
    side = read_sidecar(side_path) if side_path else SidecarConditions(ConditionSpec(), {})
    clip = is_video_file(photo)  # its people are tracks, numbered in the order they first appear
    for index in side.faces:
        if index >= num_faces:
            what, whole, order = ("track", "clip", "in the order they first appear") if clip else \
                ("face", "photo", "left to right")
            raise ConfigError(f"{side_path}: key '{what}s': {what} {index} does not exist (the {whole} has {num_faces} "
                              f"{what}{'s' if num_faces != 1 else ''}, numbered from 0, {order})")
    photo_level = side.top.over(folder)
    return [flags.over(side.faces.get(i, ConditionSpec()).over(photo_level)) for i in range(num_faces)]


class FlagOverrides:
    """The YAML settings a run's flags replace (flags win, by the precedence above), gathered per photo and said
    once after the run, naming the files: a sidecar's prompt is the user's setting too, not dropped unsaid."""

    FLAGS = {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "refs": "--ref"}

    def __init__(self, flags: ConditionSpec):
        self.flags = {k: _same(getattr(flags, k)) for k in self.FLAGS if getattr(flags, k) is not None}
        self.keys = list(self.flags)
        self.files: dict[str, set] = {}

    def add(self, photo: Path) -> None:
        for path in (sidecar_path(photo), photo.parent / FOLDER_YAML) if self.keys else ():
            if path is None or not path.is_file():
                continue
            try:
                side = read_sidecar(path, allow_faces=path.name != FOLDER_YAML)
            except ConfigError:  # the photo fails, saying why
                continue
            for k in self.keys:  # a YAML that says what the flag says loses nothing
                if any(getattr(spec, k) is not None and _same(getattr(spec, k)) != self.flags[k]
                       for spec in (side.top, *side.faces.values())):
                    self.files.setdefault(k, set()).add(path)

    def notes(self) -> list[str]:
        lines = []
        for k, paths in self.files.items():
            names = sorted(map(str, paths))
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"{self.FLAGS[k]}: used instead of the {k} in {len(names)} YAML file(s) ({shown}): flags win "
                         f"over sidecars and mgfr.yaml")
        return lines


def _same(value):
    """A setting as compared: references by the files they are (from the command line or a YAML's folder)."""
    return tuple(resolved(r) for r in value) if isinstance(value, tuple) else value


def own_references_note(photos: list[Path]) -> str:
    """Said once after a run whose references folders held photos being restored (left out of their own)."""
    names = ", ".join(p.name for p in photos[:5]) + (" ..." if len(photos) > 5 else "")
    return (f"{names}: left out of {'its' if len(photos) == 1 else 'their'} own references (a references folder "
            f"gives a photo the others; name a file to use it)")


def reference_file_notes(own: list[Path], faces_in: dict[Path, int]) -> list[str]:
    """Said once after a run: the photos left out of their own references, and the references that hold several
    faces (the largest is taken: in a group photo it may be someone else, whom identity guidance would then copy)."""
    crowded = [f"{p.name} ({n} faces)" for p, n in faces_in.items() if n > 1]
    return ([own_references_note(own)] if own else []) + ([
        f"reference {', '.join(crowded[:5])}{' ...' if len(crowded) > 5 else ''}: the largest face taken from each "
        f"(crop a reference to its person, or use --ref-library, which finds each face's matches by identity)"]
        if crowded else [])


def expand_refs(refs: tuple[Path, ...] | None, photo: Path | None = None, left_out: list | None = None
                ) -> tuple[Path, ...]:
    """Reference files: given files as they are, folders as the images directly in them (sorted), but ``photo``,
    the one being restored, or a copy of it (``restore family/ --ref family/`` gives each photo the others; a file
    named as its own reference is used, as named), and the outputs ``mgfr restore`` wrote there beside the user's
    photos (its summary lists them: restored faces are mgfr's inventions; a folder of outputs only is used as it
    is, as asked). ``left_out`` gets the files left out as ``photo`` (its copies)."""
    from mgfr_cli.ownership import restore_outputs

    own = Path(photo) if photo is not None else None
    out: list[Path] = []
    for r in refs or ():
        if r.is_dir():
            # (a broken link among them is read, and fails as any unreadable reference: never left out unsaid)
            images = sorted(p for p in r.iterdir() if is_file_or_link(p) and is_image_file(p))
            if not images:
                raise InputError(f"{r}: reference folder holds no images")
            made = restore_outputs(r, [p.name for p in r.iterdir()]) or set()
            theirs = [p for p in images if not made or resolved(p) not in made] or images  # all restore's: as asked
            for p in theirs:
                if own is None or not same_photo(p, own):
                    out.append(p)
                elif left_out is not None:
                    left_out.append(p)
        elif r.is_file():
            out.append(r)
        else:
            raise InputError(f"reference {r}: {why_missing(r)}")
    return tuple(out)


def read_reference(path: Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS):
    """A reference photo's 8-bit RGB pixels; a clip, or a file that is no readable image, is an error naming it as
    the reference (the photo it was given for fails with it)."""
    if is_video_file(path):
        raise InputError(f"reference {path}: a clip, not a photo (save a frame that shows the face as a photo)")
    try:
        return read_image(path, max_megapixels).rgb8()
    except InputError as exc:
        raise InputError(f"reference {exc}") from None
