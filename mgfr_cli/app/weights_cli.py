"""``mgfr weights``: list, fetch, convert, check and locate weight files (``weights/manifest.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from mgfr_cli.app.options import ModelRootOpt
from mgfr_cli.app.terminal import download_progress, out

weights_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="List, fetch, convert and verify weight files (weights/manifest.yaml).")

ManifestOpt = Annotated[Optional[Path], typer.Option("--manifest", help="Manifest file [default: $MGFR_MANIFEST, else weights/manifest.yaml].")]


@weights_app.command("list")
def weights_list(model_root: ModelRootOpt = None, manifest: ManifestOpt = None):
    """Every manifest entry: files, state, licence and what uses it (no hashing; see `check`)."""
    from rich.table import Table

    from mgfr_cli.weights.files import entry_state, load_manifest, resolve_root

    root = resolve_root(model_root)
    table = Table(title=f"weights in {root}")
    from mgfr_cli.weights.hub import where

    for col in ("name", "state", "where", "used by", "licence"):
        table.add_column(col, overflow="fold")
    for e in load_manifest(manifest).entries:
        places = sorted({where(root / f.path).split(" (")[0] for f in e.files} - {"missing"})
        table.add_row(e.name + (" (optional)" if e.optional else ""), entry_state(e, root, hash_files=False),
                      ", ".join(places) or "-", e.used_by, e.license)
    out.print(table)


@weights_app.command("fetch")
def weights_fetch(
    names: Annotated[Optional[list[str]], typer.Argument(help="Entries to fetch [default: every required one].")] = None,
    allow_unpinned: Annotated[bool, typer.Option("--allow-unpinned", help="Fetch files with no pinned SHA-256 and record the hash measured.")] = False,
    model_root: ModelRootOpt = None,
    manifest: ManifestOpt = None,
):
    """Download entries with resume, verify SHA-256, place each file atomically."""
    from mgfr_cli.weights.files import fetch_entry, load_manifest, resolve_root

    m = load_manifest(manifest)
    root = resolve_root(model_root)
    entries = [m.get(n) for n in names] if names else [e for e in m.entries if not e.optional]
    with download_progress() as on_bytes:
        for e in entries:
            placed = fetch_entry(e, root, allow_unpinned=allow_unpinned, progress=on_bytes)
            out.print(f"{e.name}: " + (f"placed {len(placed)} file(s)" if placed else "already present"))
            if e.convert:
                from mgfr_cli.weights.provision import convert_entry, converted_dir

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
    from mgfr_cli.weights.convert import convert_diffbir
    from mgfr_cli.weights.provision import base_unet_config, incompatible_hashes
    from mgfr_cli.weights.files import load_manifest, resolve_root

    if kind != "diffbir":
        raise typer.BadParameter("KIND must be diffbir")
    root = resolve_root(model_root)
    done = convert_diffbir(src, output, unet_config=base_unet_config(root, base), source=source,
                           known_bad=incompatible_hashes(load_manifest(manifest), root), model_root=root)
    out.print(f"wrote {done} (use: mgfr restore ... --checkpoint {done})")


@weights_app.command("check")
def weights_check(names: Annotated[Optional[list[str]], typer.Argument()] = None, model_root: ModelRootOpt = None,
                  manifest: ManifestOpt = None):
    """Hash every present file against the manifest; exit 1 if any is corrupt."""
    from mgfr_cli.weights.files import check_entry, load_manifest, resolve_root

    m = load_manifest(manifest)
    root = resolve_root(model_root)
    bad = 0
    for e in [m.get(n) for n in names] if names else m.entries:
        for st in check_entry(e, root):
            colour = {"verified": "green", "missing": "yellow", "corrupt": "red"}.get(st.state, "cyan")
            out.print(Text.assemble((f"{st.state:>18}", colour), f"  {st.path}" + (f"  ({st.detail})" if st.detail else "")))
            bad += st.state == "corrupt"
    raise typer.Exit(1 if bad else 0)


@weights_app.command("path")
def weights_path(name: str, model_root: ModelRootOpt = None, manifest: ManifestOpt = None):
    """Print where an entry's (first) file lives in the model root."""
    from mgfr_cli.weights.files import load_manifest, resolve_root

    e = load_manifest(manifest).get(name)
    first = e.files[0].path
    out.print(str(resolve_root(model_root) / (first.split("/")[0] if "/" in first else first)), soft_wrap=True)


