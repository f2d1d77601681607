"""``OUT/index.html``: a static review page of a batch run (no server, no internet).

One entry per photo: a before/after slider, each face aligned and restored, the conditions it was
restored with and where they came from; then the photos that failed or had no face, with the reason.
The page is rewritten (atomically) as photos are done, at most as often as keeps rewriting it under a tenth
of the run (a 10,000-photo page takes half a second to rewrite), and when the run ends or is stopped, so an
interrupted run still has a valid page; its entries are kept in ``OUT/_report/entries.json``, so a resumed run
adds to the page instead of starting it again. Images are small JPEG copies under ``OUT/_report/`` (browsers
cannot show 16-bit PNG or TIFF, and the page must not depend on where the inputs are); CSS and JS are inline.
"""

from __future__ import annotations

import glob
import hashlib
import html
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from mgfr_cli.errors import OutputError
from mgfr_cli.faces.io import Photo
from mgfr_cli.files import atomic_write_bytes, folder_lock, temp_prefix
from mgfr_cli.ownership import PAGE_MARK

FOLDER = "_report"
THUMB = 1600  # longest side of the before/after copies
FACE = 192


def _jpeg(path: Path, rgb: np.ndarray, longest: int) -> None:
    import cv2

    h, w = rgb.shape[:2]
    if max(h, w) > longest:
        s = longest / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 88])
    atomic_write_bytes(path, buf.tobytes())


def image_name(key: tuple, part: str) -> str:
    """The page's image ``part`` (``before``, ``after``, a face's ``NN_a`` aligned and ``NN_r`` restored crop) of
    the entry ``key`` (its photo and output): named by their hash, so a rerun's entry replaces its own images."""
    return hashlib.sha1("\0".join(key).encode("utf-8", "surrogateescape")).hexdigest()[:12] + f"_{part}.jpg"


# What the page writes in its folder: its images (image_name), its entries, their temporary files (a run stopped
# while writing its first entry leaves only these, and no entries.json yet: still mgfr's folder, taken back)
PAGE_FILE = re.compile(r"\.?([0-9a-f]{12}_(before|after|\d{2}_[ar])\.jpg|entries\.json)(\..+\.tmp)?")


def report_folder(output: Path) -> Path:
    """``OUT/_report``, unless a folder of that name holds files mgfr did not put there."""
    from mgfr_cli.ownership import is_json_rows

    for n in range(1, 100):
        folder = output / (FOLDER if n == 1 else f"{FOLDER}-mgfr-{n}")
        if not folder.exists() or (folder.is_dir() and not folder.is_symlink() and (
                all(PAGE_FILE.fullmatch(p.name) and p.is_file() for p in folder.iterdir())
                or is_json_rows(folder / "entries.json", {"source"}))):
            return folder
    raise OutputError(f"{output}: no free folder for the review page's images")


class Report:
    """The page of one run. Several runs into one folder share it: each write merges this run's entries into
    what is on disk (under a lock), and a skip never replaces another run's result. An entry is a photo and its
    output, as a summary row is (``--suffix _a`` then ``--suffix _b``: both shown); a photo's result replaces its
    entry without an output (a failure)."""

    SPACING = 10  # a rewrite waits ten times what the last one took: the page costs a run under a tenth of its time

    def __init__(self, output: Path, title: str = "mgfr restore"):
        from mgfr_cli.ownership import is_mgfr_page, own_or_free

        self.output = Path(output)
        self.folder = report_folder(self.output)
        self.page, self.note = own_or_free(self.output / "index.html", is_mgfr_page)
        if self.folder.name != FOLDER:  # a folder of the user's at _report: kept, and said where the images went
            self.note = "; ".join(filter(None, (self.note, f"{self.output / FOLDER} holds files mgfr did not write: "
                                                             f"kept, and the page's images written to {self.folder.name}")))
        self.title = title
        with folder_lock(self.folder):  # a temporary file seen under the page's lock was left by a killed run
            page_temporaries = self.output.glob(f"{glob.escape(temp_prefix(self.page))}*.tmp")
            for stale in [*self.folder.glob(".*.tmp"), *page_temporaries]:
                stale.unlink(missing_ok=True)
        self.entries: dict[str, dict] = self._saved()  # photo -> {its output (None: a failure) -> entry}
        self.mine: dict[tuple, dict] = {}  # this run's entries by (photo, output)
        self.next_write = 0.0  # (monotonic time) rewrites spaced by SPACING times their cost
        self.unwritten: list[str] = []  # the photos added since the page was last written
        self.failed = ""  # why the page stopped being written (a full disk): the run goes on, and says it at its end

    def _saved(self) -> dict[str, dict]:
        from mgfr_cli.ownership import recorded_output

        saved = self.folder / "entries.json"
        entries: dict[str, dict] = {}
        if saved.is_file():
            try:
                for e in json.loads(saved.read_text()):  # outputs by the file they name (older pages: as typed)
                    out = e.get("output") or None
                    if out and not os.path.isabs(out):  # (on every write: resolved only where a path is relative)
                        out = str(recorded_output(out, self.output))
                    entries.setdefault(e["source"], {})[out] = e
            except (ValueError, KeyError, TypeError, AttributeError):
                return {}
        return entries

    def add(self, outcome, photo=None, faces=(), restored=(), conditions=(), after=None) -> None:
        """Record one photo's outcome (with its pixels when it was restored: ``after``, as written) and
        rewrite the page."""
        from mgfr_cli.app.summary import result_of, source_key, wrote_output

        source = source_key(outcome.source)
        entry = {"source": source, "name": Path(source).name, "status": outcome.status, "detail": outcome.detail,
                 "output": source_key(outcome.output) if outcome.output else None}  # resolved, as the summary
        key = (source, entry["output"])
        if getattr(outcome, "tracks", ()):
            import os
            from urllib.parse import quote

            entry["tracks"] = list(outcome.tracks)  # the link is a URL: 'clip #1.mp4' is not a fragment
            entry["href"] = quote(os.path.relpath(outcome.output, self.output)) if outcome.output else ""
        old = result_of(self.entries.get(source, {}), key[1])
        if outcome.status == "skipped" and old and old.get("before"):
            entry = {**old, "status": "restored", "detail": old.get("detail", "")}  # done by an earlier run
        elif outcome.status == "skipped" and old and wrote_output(old):
            entry = old  # written without a face by an earlier run: still that
        key = (source, entry.get("output"))
        if self.failed:
            return
        if photo is not None and after is not None and outcome.status == "restored":
            rel = self.folder.name
            if after.ndim == 3 and after.shape[2] == 2:  # gray+alpha as written: its gray
                after = after[:, :, 0]
            entry["before"], entry["after"] = f"{rel}/{image_name(key, 'before')}", f"{rel}/{image_name(key, 'after')}"
            entry["faces"], new = [], []

            def thumb(name: str, rgb: np.ndarray, size: int) -> None:
                if not (self.output / name).exists():
                    new.append(self.output / name)
                _jpeg(self.output / name, rgb, size)

            try:
                with folder_lock(self.folder):  # (every temporary file of the page's is made under its lock)
                    thumb(entry["before"], photo.rgb8(), THUMB)
                    thumb(entry["after"], Photo(after).rgb8(), THUMB)
                    for f, r, c in zip(faces, restored, conditions or [None] * len(faces)):
                        a, b = (f"{rel}/{image_name(key, f'{f.index:02d}_{part}')}" for part in "ar")
                        thumb(a, f.crop, FACE)
                        thumb(b, r, FACE)
                        entry["faces"].append({"index": f.index, "aligned": a, "restored": b, **(c or {})})
            except OSError as exc:  # (a full disk) the images this entry added are removed: no page names them
                for image in new:
                    image.unlink(missing_ok=True)
                return self._stop(exc, source)
        self.entries.setdefault(source, {})[key[1]] = self.mine[key] = entry
        self.unwritten.append(source)
        if time.monotonic() >= self.next_write:
            self.write()

    def flush(self) -> list[str]:
        """Write what :meth:`add` has not written yet (at the end of a run, or when it is stopped); the run's note
        when the page could not be written to the end."""
        if self.unwritten and not self.failed:
            self.write()
        return [f"review page: {self.failed}"] if self.failed else []

    def _stop(self, exc: OSError, source: str) -> None:
        """The page is not written again this run (the one on disk stays whole): said at the end of the run."""
        self.failed = (f"stopped at {Path(source).name} ({exc.strerror or exc}): the photos from it on are "
                       f"restored and listed in mgfr-summary.json, but not shown on the page")

    def write(self) -> None:
        from mgfr_cli.app.summary import place

        started = time.monotonic()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with folder_lock(self.folder):
                merged = self._saved()
                for (source, output), mine in self.mine.items():  # the summary's rule: a skip never replaces a result
                    place(merged.setdefault(source, {}), output, mine)
                self.entries = merged
                entries = [e for per in merged.values() for e in per.values()]
                atomic_write_bytes(self.folder / "entries.json", json.dumps(entries, indent=1).encode())
                atomic_write_bytes(self.page, render(self.title, entries).encode())
        except OSError as exc:  # the page as last written stays (each file is replaced whole)
            return self._stop(exc, self.unwritten[0] if self.unwritten else str(self.page))
        self.unwritten, self.next_write = [], time.monotonic() + self.SPACING * (time.monotonic() - started)


def _e(text) -> str:
    """HTML-escaped text; undecodable bytes of file names (kept as surrogates) shown as U+FFFD."""
    text = str(text if text is not None else "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(text, quote=True)


CSS = """body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#111;color:#eee}
header{padding:16px 24px;background:#1b1b1b;position:sticky;top:0;z-index:2}h1{margin:0;font-size:20px}
main{padding:8px 24px 48px}.photo{margin:24px 0;padding:16px;background:#1b1b1b;border-radius:8px}
.photo h2{font-size:16px;margin:0 0 8px}.slider{position:relative;display:inline-block;max-width:100%;line-height:0}
.slider img{max-width:100%;max-height:75vh;display:block}.slider .before{position:absolute;top:0;left:0;height:100%;
width:50%;overflow:hidden}.slider .before img{max-width:none;height:100%}.slider input{width:100%;margin-top:6px}
.faces{display:flex;flex-wrap:wrap;gap:12px;margin-top:10px}.face{background:#242424;padding:6px;border-radius:6px}
.face img{width:96px;height:96px}.meta{color:#aaa;font-size:13px}table{border-collapse:collapse}
td,th{border:1px solid #333;padding:4px 8px;text-align:left}.failed{color:#f88}.label{font-size:12px;color:#999}"""

JS = """document.querySelectorAll('.slider').forEach(function(s){var b=s.querySelector('.before'),
i=s.querySelector('.before img'),a=s.querySelector('.after'),r=s.querySelector('input');
function sync(){i.style.width=a.clientWidth+'px';i.style.height=a.clientHeight+'px';b.style.width=r.value+'%';}
r.addEventListener('input',sync);a.addEventListener('load',sync);window.addEventListener('resize',sync);sync();});"""


def render(title: str, entries: list[dict]) -> str:
    done = [e for e in entries if e.get("before")]
    videos = [e for e in entries if e.get("tracks") and not e.get("before")]
    other = [e for e in entries if not e.get("before") and not e.get("tracks")]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>{PAGE_MARK}<title>{_e(title)}</title><style>{CSS}</style>"
             f"</head><body><header><h1>{_e(title)}</h1><div class='meta'>{len(done) + len(videos)} restored, "
             f"{len(other)} not restored</div></header><main>"]
    for e in done:
        parts.append(f"<section class='photo' data-status='restored'><h2>{_e(e['name'])}</h2>"
                     f"<div class='slider'><img class='after' alt='after' src='{_e(e['after'])}'>"
                     f"<div class='before'><img alt='before' src='{_e(e['before'])}'></div>"
                     f"<input type='range' min='0' max='100' value='50' aria-label='before/after'></div>"
                     f"<div class='meta'>{_e(e['source'])} &rarr; {_e(e.get('output'))}"
                     f"{' &middot; ' + _e(e['detail']) if e.get('detail') else ''}</div><div class='faces'>")
        for f in e.get("faces", []):
            cond = "; ".join(f"{k}: {_e(v)}" for k, v in f.items() if k in ("prompt", "negative_prompt", "refs", "library", "from", "identity") and v)
            parts.append(f"<div class='face'><img alt='aligned' src='{_e(f['aligned'])}'><img alt='restored' "
                         f"src='{_e(f['restored'])}'><div class='label'>face {f['index']}</div>"
                         f"<div class='label'>{cond or 'no prompt, no references'}</div></div>")
        parts.append("</div></section>")
    for e in videos:
        rows = "".join(f"<tr><td>{t['track']}</td><td>{t['frames']}</td><td>{t['flicker']['input']:.2f}</td>"
                       f"<td>{t['flicker']['restored']:.2f}</td></tr>" for t in e["tracks"])
        parts.append(f"<section class='photo' data-status='video'><h2>{_e(e['name'])}</h2><div class='meta'>"
                     f"{_e(e['source'])} &rarr; <a href='{_e(e.get('href', ''))}'>"
                     f"{_e(e.get('output'))}</a> &middot; {_e(e.get('detail'))}</div><table><tr><th>track</th>"
                     f"<th>frames</th><th>flicker in (mean |frame - previous|)</th><th>flicker restored</th></tr>"
                     f"{rows}</table></section>")
    if other:
        parts.append("<section class='photo'><h2>Not restored</h2><table><tr><th>file</th><th>outcome</th>"
                     "<th>reason</th></tr>")
        for e in other:
            parts.append(f"<tr class='failed' data-status='{_e(e['status'])}'><td>{_e(e['source'])}</td>"
                         f"<td>{_e(e['status'])}</td><td>{_e(e['detail'])}</td></tr>")
        parts.append("</table></section>")
    parts.append(f"</main><script>{JS}</script></body></html>")
    return "".join(parts)
