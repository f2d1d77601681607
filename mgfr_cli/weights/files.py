"""Weight files: the manifest, the model root, verified resumable fetches, and what a command needs.

``weights/manifest.yaml`` lists every file mgfr can use with its sources, SHA-256, size and licence.
A fetch downloads to ``<file>.part`` (resumed with an HTTP Range request after a cut), verifies the
hash, and only then renames the file into place; a file that fails verification is deleted. Where the
manifest has no pinned hash yet, ``--allow-unpinned`` fetches it and records the hash it measured in
``pins.yaml`` beside the files (trust on first download), so later checks verify against it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mgfr_cli.configs import check_keys, expect_type, read_yaml
from mgfr_cli.errors import ConfigError, WeightsError
from mgfr_cli.files import folder_lock, is_broken_link, resolved, why_missing

REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
MANIFEST = REPO_WEIGHTS / "manifest.yaml"  # $MGFR_MANIFEST, when set, replaces it (mirrors, tests)
PINS = "pins.yaml"
CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    path: str  # relative to the model root
    sha256: str | None = None
    size: int | None = None
    remote: str | None = None  # path under each source URL (default: ``path`` without the entry's folder)

    @property
    def source_path(self) -> str:
        """The file's path under each source URL."""
        return self.remote or (self.path.split("/", 1)[1] if "/" in self.path else self.path)


@dataclass(frozen=True)
class Entry:
    name: str
    sources: tuple[str, ...]  # URL prefixes, tried in order; file URL = prefix + remote
    files: tuple[WeightFile, ...]
    license: str = ""
    used_by: str = ""
    optional: bool = False
    note: str = ""
    convert: str = ""  # "diffbir": converted into an adapter folder (MODEL_ROOT/<name>-lca) after fetching
    incompatible: bool = False  # listed only so that its hash is known and the file refused


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]
    path: Path | None = field(default=None, compare=False)

    def get(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise ConfigError(f"no weight entry named {name!r} in {self.path} (known: {', '.join(e.name for e in self.entries)})")


def default_manifest() -> Path:
    return Path(os.environ.get("MGFR_MANIFEST") or MANIFEST)


def load_manifest(path: Path | None = None) -> Manifest:
    path = path or default_manifest()
    data = read_yaml(path)
    check_keys(data, {"entries"}, str(path))
    entries = []
    for i, raw in enumerate(expect_type(data.get("entries", []), list, str(path), "entries")):
        where = f"{path}: entries[{i}]"
        expect_type(raw, dict, str(path), f"entries[{i}]")
        check_keys(raw, {"name", "sources", "files", "license", "used_by", "optional", "note", "convert", "incompatible"}, where)
        if raw.get("convert", "") not in ("", "diffbir"):
            raise ConfigError(f"{where}: convert must be 'diffbir', got {raw['convert']!r}")
        if "name" not in raw:
            raise ConfigError(f"{where}: missing key 'name'")
        if not NAME_RE.fullmatch(str(raw["name"])):
            raise ConfigError(f"{where}: name {raw['name']!r} must be letters, digits, '.', '_' or '-' (it names a "
                              f"folder in the model root)")
        files = []
        for j, f in enumerate(expect_type(raw.get("files", []), list, where, "files")):
            expect_type(f, dict, where, f"files[{j}]")
            check_keys(f, {"path", "sha256", "size", "remote"}, f"{where}.files[{j}]")
            if "path" not in f:
                raise ConfigError(f"{where}.files[{j}]: missing key 'path'")
            for key in ("path", "remote"):
                if f.get(key) is not None and not _plain_relative(str(f[key])):
                    raise ConfigError(f"{where}.files[{j}]: {key} {f[key]!r} must be a relative path inside the model "
                                      f"root (no absolute path, no '..', no backslash)")
            size = f.get("size")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
                raise ConfigError(f"{where}.files[{j}]: size must be a whole number of bytes, got {size!r}")
            files.append(WeightFile(path=str(f["path"]), sha256=f.get("sha256"), size=size, remote=f.get("remote")))
        for earlier in entries:  # the first would win and the second be dropped without a word
            if earlier.name == str(raw["name"]):
                raise ConfigError(f"{where}: entry {raw['name']!r} is given twice in the manifest: keep one")
            if twice := {f.path for f in earlier.files} & {f.path for f in files}:
                raise ConfigError(f"{where}: file {sorted(twice)[0]!r} is also listed by entry {earlier.name!r}: a file "
                                  f"belongs to one entry")
        entries.append(Entry(name=str(raw["name"]), sources=tuple(raw.get("sources", [])), files=tuple(files),
                             license=str(raw.get("license", "")), used_by=str(raw.get("used_by", "")),
                             optional=bool(raw.get("optional", False)), note=str(raw.get("note", "")),
                             convert=str(raw.get("convert", "")), incompatible=bool(raw.get("incompatible", False))))
    return Manifest(tuple(entries), path)


NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def _plain_relative(path: str) -> bool:
    """A path that stays below the folder it is joined to: relative, no '..', no empty or odd parts."""
    parts = path.split("/")
    return (bool(path) and "\\" not in path and "\0" not in path and not path.startswith("/")
            and all(p not in ("", ".", "..") for p in parts) and ":" not in parts[0])


def inside_root(root: Path, rel: str) -> Path:
    """``root / rel``, refused when its folder leaves ``root`` (a link to a folder inside the root pointing out, say).
    The file itself may be a link: one is replaced, never written through."""
    path = root / rel
    real_root, real = resolved(root), resolved(path.parent) / path.name
    if real_root not in real.parents:
        raise WeightsError(f"{path}: resolves outside the model root {root}; not written")
    return path


def resolve_root(model_root: Path | None = None) -> Path:
    """``--model-root``, else ``$MGFR_HOME``, else the repository's ``weights/`` folder. One that is a broken link (to
    a drive not mounted) is said so: every weight in it would be "missing", and a fetch could not write there."""
    env = os.environ.get("MGFR_HOME")
    root = Path(model_root) if model_root is not None else Path(env) if env else REPO_WEIGHTS
    if is_broken_link(root):
        raise WeightsError(f"the model root {root}: {why_missing(root)}: mount or fix what it points to, or give "
                           f"--model-root (or $MGFR_HOME)")
    return root


# -- verification ----------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


SAMPLES, SAMPLE = 16, 1 << 16  # a fingerprint reads 16 blocks of 64 KiB per file: head, tail and between


def fingerprint(paths) -> str:
    """What these weights are, cheaply: each file's size and 16 blocks sampled from its head to its tail (a
    folder: each of its files, by name inside it). Two checkpoints of one training run differ in it and a copy of
    one does not; not a full hash, which would read a 5 GB base on every run. What a run's outputs are made with
    (``app.outputs.recipe_text``)."""
    h = hashlib.sha1()
    for path in map(Path, paths):
        files = [path]
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
        for f in files:
            h.update(f"{f.relative_to(path).as_posix() if f != path else ''}\0".encode("utf-8", "surrogateescape"))
            try:
                with open(f, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    h.update(str(size).encode())
                    for k in range(SAMPLES):
                        fh.seek(max(0, size - SAMPLE) * k // (SAMPLES - 1))
                        h.update(fh.read(SAMPLE))
            except OSError:
                h.update(b"unreadable")
        h.update(b"\1")
    return h.hexdigest()[:16]


def read_pins(root: Path) -> dict:
    p = root / PINS
    return {str(k): str(v) for k, v in read_yaml(p).items()} if p.is_file() else {}


def write_pin(root: Path, rel: str, digest: str) -> None:
    import yaml

    from mgfr_cli.files import atomic_write_bytes, file_lock

    with file_lock(root / f".{PINS}.lock"):  # two fetches pinning at once: each reads the other's pin
        pins = read_pins(root)
        pins[rel] = digest
        atomic_write_bytes(root / PINS, yaml.safe_dump(pins, sort_keys=True).encode())


@dataclass(frozen=True)
class FileStatus:
    entry: str
    path: Path
    state: str  # "verified", "present (unpinned)", "missing", "corrupt"
    detail: str = ""


def check_entry(entry: Entry, root: Path, pins: dict | None = None, hash_files: bool = True) -> list[FileStatus]:
    pins = read_pins(root) if pins is None else pins
    out = []
    for f in entry.files:
        p = root / f.path
        expected = f.sha256 or pins.get(f.path)
        if not p.is_file():
            out.append(FileStatus(entry.name, p, "missing"))
        elif f.size is not None and p.stat().st_size != f.size:
            out.append(FileStatus(entry.name, p, "corrupt", f"size {p.stat().st_size}, expected {f.size}"))
        elif expected is None:
            out.append(FileStatus(entry.name, p, "present (unpinned)", "no SHA-256 pinned yet"))
        elif not hash_files:
            out.append(FileStatus(entry.name, p, "present"))
        elif sha256_of(p) != expected:
            out.append(FileStatus(entry.name, p, "corrupt", "SHA-256 differs from the manifest"))
        else:
            out.append(FileStatus(entry.name, p, "verified"))
    return out


def entry_state(entry: Entry, root: Path, hash_files: bool = True) -> str:
    """One word for a whole entry: missing, incomplete, corrupt, unpinned, present (not hashed) or verified."""
    states = {s.state for s in check_entry(entry, root, hash_files=hash_files)}
    if "corrupt" in states:
        return "corrupt"
    if "missing" in states:
        return "missing" if states == {"missing"} else "incomplete"
    if "present (unpinned)" in states:
        return "unpinned"
    return "present" if "present" in states else "verified"


# -- fetching ---------------------------------------------------------------------------------------
def fetch_entry(entry: Entry, root: Path, *, allow_unpinned: bool = False, timeout: float = 30.0,
                progress: Callable[[str, int, int | None], None] | None = None, offline: bool = False) -> list[Path]:
    """Place every file of ``entry`` that is not already verified; return the files placed. Files on the Hub are
    linked from the Hugging Face cache (found there, or downloaded into it: :mod:`weights.hub`); the others are
    downloaded into the model root. ``offline``: the cache only, no network."""
    from mgfr_cli.weights import hub

    if not entry.sources:
        raise WeightsError(f"{entry.name}: no download source in the manifest ({entry.note or 'place the files by hand'})")
    hub_sources = [s for s in entry.sources if hub.hub_repo(s)]
    placed = []
    for f in entry.files:
        dest = inside_root(root, f.path)
        remote = f.source_path
        if offline and check_entry(Entry(entry.name, entry.sources, (f,)), root)[0].state == "missing" \
                and hub.find_cached(hub_sources, remote) is None:
            raise WeightsError(f"{entry.name}: {f.path} is not in the model root" + (
                " nor in the Hugging Face cache" if hub_sources else "") + ", and this run is offline")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WeightsError(f"{dest.parent}: cannot write weights there ({exc.strerror or exc}); use --model-root "
                               f"or $MGFR_HOME to choose a writable folder") from None
        with folder_lock(dest.parent):  # a second fetch of the same file waits here, then finds it placed
            pins = read_pins(root)
            status = check_entry(Entry(entry.name, entry.sources, (f,)), root, pins)[0]
            if status.state in ("verified", "present (unpinned)"):
                continue
            if dest.is_symlink() and not hub.is_cache_link(dest):  # the user's: never replaced by mgfr
                raise WeightsError(f"{dest}: a link to {os.readlink(dest)}, " + (
                    "which is not there (a drive not mounted?)" if not dest.exists() else f"which is {status.state}")
                    + ": fix what it points to, or delete the link to fetch a copy")
            expected = f.sha256 or pins.get(f.path)
            if expected is None and not allow_unpinned:
                raise WeightsError(f"{entry.name}: {f.path} has no pinned SHA-256 in the manifest; fetch with "
                                   f"--allow-unpinned to trust the first download (its hash is then recorded in {root / PINS})")
            errors = []
            cached = hub.find_cached(hub_sources, remote)
            for prefix in [] if cached is not None or offline else entry.sources:
                try:
                    if hub.hub_repo(prefix):
                        cached = hub.download(prefix, remote, timeout, f.size, MAX_UNSIZED)
                        break
                    digest = download(prefix.rstrip("/") + "/" + remote, dest, expected, f.size, timeout=timeout,
                                      progress=(lambda n, t, p=f.path: progress(p, n, t)) if progress else None)
                except (_SourceFailed, ConnectionError) as exc:
                    errors.append(str(exc))
                    continue
                if expected is None:
                    write_pin(root, f.path, digest)
                placed.append(dest)
                break
            else:
                if cached is None:
                    why = "; ".join(errors) or ("not in the Hugging Face cache, and this run is offline" if hub_sources
                                                else "this run is offline")
                    raise WeightsError(f"{entry.name}: could not fetch {f.path}: {why}")
            if cached is not None:
                digest = hub.link_into_root(cached, dest, expected, entry.name)
                if expected is None:
                    write_pin(root, f.path, digest)
                placed.append(dest)
    return placed


class _SourceFailed(Exception):
    """This source did not give a good file; the next one may."""


MAX_UNSIZED = 16 << 30  # a file whose size neither the manifest nor the server states: read at most this


def _expected_total(length: str | None, have: int, size: int | None, url: str) -> int | None:
    """How many bytes the whole file has: the manifest's size, else the server's Content-Length (+ the part
    already on disk); a server that announces another size than the manifest is refused before reading."""
    announced = None
    if length is not None:
        try:
            announced = int(length) + have
        except ValueError:
            announced = None
    if size is not None and announced is not None and announced != size:
        raise _SourceFailed(f"{url}: the server announces {announced:,} bytes, the manifest says {size:,}")
    return size if size is not None else announced


def download(url: str, dest: Path, sha256: str | None, size: int | None, *, timeout: float = 30.0,
             progress: Callable[[int, int | None], None] | None = None) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a partial file; verify; rename. Returns the hash."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.TemporaryFile(dir=dest.parent):  # a real probe: permission bits say nothing to root
            pass
    except OSError as exc:  # the model root itself is the problem: no mirror can help, and nothing to resume
        raise WeightsError(f"{dest.parent}: cannot write weights there ({exc.strerror or exc}); use --model-root "
                           f"or $MGFR_HOME to choose a writable folder") from None
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mgfr", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resumed = have > 0 and resp.status == 206
            total = _expected_total(resp.headers.get("Content-Length"), have if resumed else 0, size, url)
            limit = total if total is not None else MAX_UNSIZED
            with open(part, "ab" if resumed else "wb") as fh:
                done = have if resumed else 0
                while block := resp.read(min(CHUNK, limit - done + 1)):
                    if done + len(block) > limit:  # a server that sends more than it announced: stop reading
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise _SourceFailed(f"{url}: the server sent more than the {limit:,} bytes "
                                            f"{'expected' if total is not None else 'allowed for a file of unknown size'}; "
                                            f"stopped and deleted")
                    fh.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
            if total is not None and done < total:  # http.client ends a cut body quietly
                raise ConnectionError(f"the server sent {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already whole: verify it below
            pass
        else:
            raise _SourceFailed(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _SourceFailed(f"{url}: no network or host unreachable ({exc.reason})") from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:  # IncompleteRead: a cut transfer
        # The partial file stays: the next fetch resumes from it.
        raise _SourceFailed(f"{url}: connection lost after {part.stat().st_size if part.exists() else 0} bytes "
                            f"({exc}); run the fetch again to resume") from None
    if size is not None and part.stat().st_size != size:
        got = part.stat().st_size
        if got > size:
            part.unlink()
        raise _SourceFailed(f"{url}: got {got} bytes, expected {size}" + ("; run the fetch again to resume" if got < size else ""))
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256:
        part.unlink()  # never keep a file that fails verification
        raise _SourceFailed(f"{url}: SHA-256 mismatch (got {digest[:12]}..., expected {sha256[:12]}...); file deleted")
    os.replace(part, dest)
    return digest
