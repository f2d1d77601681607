"""Weights that live on the Hugging Face Hub: found in the cache people already have, fetched through
``huggingface_hub`` (so ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``
apply), and linked into the model root.

A manifest source ``https://huggingface.co/OWNER/REPO/resolve/REVISION`` is a Hub repository. A file of such an
entry that is not in the model root is looked up in the Hub cache under every source the entry lists (SD 2.1
base from any of its mirrors), else downloaded with ``hf_hub_download`` into that cache; either way its SHA-256
is checked against the manifest (or the hash recorded on first download) before the model root gets a symbolic
link to it. A real file in the model root always wins: ``--model-root``/``$MGFR_HOME`` keep working as one folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mgfr_cli.errors import WeightsError
from mgfr_cli.files import resolved, temp_prefix

HUB_SOURCE = re.compile(r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/?(?P<sub>.*)$")


def hub_repo(source: str) -> tuple[str, str, str] | None:
    """``(repo_id, revision, subfolder)`` of a Hub source URL, or None for any other host."""
    m = HUB_SOURCE.match(source.rstrip("/"))
    return (m["repo"], m["rev"], m["sub"].strip("/")) if m else None


def cache_dir() -> Path:
    """The Hub cache, as ``huggingface_hub`` finds it, read now (not when the library was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _filename(sub: str, remote: str) -> str:
    return f"{sub}/{remote}" if sub else remote


def find_cached(sources, remote: str) -> Path | None:
    """The file in the Hub cache under any of ``sources``, or None. No network."""
    from huggingface_hub import try_to_load_from_cache

    for source in sources:
        repo = hub_repo(source)
        if repo is None:
            continue
        found = try_to_load_from_cache(repo[0], _filename(repo[2], remote), cache_dir=str(cache_dir()), revision=repo[1])
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


class TooLarge(ConnectionError):
    """The server sent more than the file can have: the download was stopped."""


def _bounded_bar(size: int | None, limit: int):
    """huggingface_hub's progress bar, counting what is read: past the manifest's ``size`` (else the size the
    server announced, else ``limit``) it stops the download (huggingface_hub reads a body to its end, however
    long, and checks the size only then: a mirror that never stops would fill the disk)."""
    from huggingface_hub.utils import tqdm

    class Bounded(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.mgfr_read = kwargs.get("initial") or 0
            self.mgfr_limit = size if size is not None else kwargs.get("total") or limit

        def update(self, n=1):
            self.mgfr_read += n or 0
            if self.mgfr_read > self.mgfr_limit:
                raise TooLarge(f"the server sent more than the {self.mgfr_limit:,} bytes the file has; stopped")
            return super().update(n)

    return Bounded


def download(source: str, remote: str, timeout: float, size: int | None, limit: int) -> Path:
    """``hf_hub_download`` of one file into the Hub cache (through ``HF_ENDPOINT``, with ``HF_TOKEN``), read at most
    to ``size`` bytes (the manifest's; else the server's, else ``limit``)."""
    from huggingface_hub import hf_hub_download

    repo_id, revision, sub = hub_repo(source)
    try:
        return Path(hf_hub_download(repo_id, _filename(sub, remote), revision=revision, cache_dir=str(cache_dir()),
                                    endpoint=os.environ.get("HF_ENDPOINT") or None,
                                    token=os.environ.get("HF_TOKEN") or None, etag_timeout=timeout,
                                    tqdm_class=_bounded_bar(size, limit)))
    except TooLarge as exc:
        raise TooLarge(f"{source}/{remote}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - huggingface_hub and httpx raise many kinds; each is one line here
        raise ConnectionError(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}") from None


def link_into_root(cached: Path, dest: Path, expected: str | None, what: str) -> str:
    """Check ``cached`` against ``expected`` (SHA-256) and link it at ``dest``; returns its hash."""
    from mgfr_cli.weights.files import sha256_of

    digest = sha256_of(cached)
    if expected is not None and digest != expected:
        raise WeightsError(f"{what}: the Hugging Face cache's copy {cached} has SHA-256 {digest[:12]}..., the manifest "
                           f"says {expected[:12]}...; refused (delete it from the cache and fetch again)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    made = dest.with_name(f"{temp_prefix(dest)}{os.getpid()}.tmp")  # (where the link is made, then moved in place)
    made.unlink(missing_ok=True)
    os.symlink(resolved(cached), made)
    os.replace(made, dest)  # over a link made earlier (the cache moved) or a file that failed its hash, as a download
    return digest


def is_cache_link(path: Path) -> bool:
    """A link :func:`link_into_root` made: to a file of a Hugging Face cache (a blob, or a snapshot's file where the
    cache holds no links), wherever that cache is or was (moved or cleared, the link points at nothing: made again)."""
    return path.is_symlink() and re.search(r"(^|/)models--[^/]+/(blobs|snapshots)/", os.readlink(path)) is not None


def where(path: Path) -> str:
    """Where a model-root file really is: the model root, the Hugging Face cache, or missing."""
    if not path.exists():
        return "missing"
    if path.is_symlink():
        target = resolved(path)
        return f"HF cache ({target})" if resolved(cache_dir()) in target.parents else f"link ({target})"
    return "model root"
