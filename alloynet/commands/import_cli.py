"""`alloynet import`: a lab's own image files (ImageFolder tree or labels CSV) -> captures in a capture store.

Exit codes: 0 when every file was imported (or was there already) or deliberately skipped (files that are
not images); 1 when any file was rejected (what could be imported is, and the manifest is refreshed), when
nothing was found to import, or when the store failed; 2 for usage errors (bad options, an unreadable or
malformed --rig YAML or labels CSV header); 75 when another writer holds the store.

Problems are reported as a compiler does: one line per distinct problem with its count and up to three
example files, then the option, column or file that fixes it (``--details`` lists every file).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from alloynet.commands.data_cli import EXIT_BUSY, SizeOpt, WaitOpt, _sizes, console

EXIT_NOTHING = 1
EXIT_USAGE = 2


def _line(text: str, code: int | None = None) -> None:
    console.print(text, markup=False, highlight=False)
    if code is not None:
        raise typer.Exit(code)


def _print_table(res) -> None:
    # no box-drawing characters in a pipe or a log: aligned plain columns a script can split on spaces
    table = Table(title=f"import: {res.summary()}", box=box.HEAVY_HEAD if console.is_terminal else None)
    for col in ("alloy", "imported", "already present", "rejected"):
        table.add_column(col, justify="left" if col == "alloy" else "right")
    for alloy, *counts in res.per_class():
        table.add_row(alloy, *map(str, counts))
    table.add_row("total", str(len(res.imported)), str(len(res.present)), str(len(res.rejected)))
    console.print(table)


# a setting every file needs: from the option, the --rig YAML or the file's CSV row
NEEDED = " [default: the --rig YAML's, else the CSV column; a file with none is rejected, naming it]"


def import_captures(
    source: Path = typer.Argument(
        ..., help="an ImageFolder root ROOT/[train|val|test/]CLASS/*.tif|png, or a labels CSV (its folder is the root)"
    ),
    store: str = typer.Argument(..., help="capture store to write: a directory or s3://bucket/prefix"),
    labels: Path | None = typer.Option(
        None,
        help="labels CSV: file, alloy[, thickness_mm, plate_id, wedge_mm, "
        "kvp, dark, flat, role]; files relative to SOURCE [default: SOURCE when it is a CSV, else the class "
        "folders give the alloy]",
    ),
    rig: Path | None = typer.Option(
        None,
        "--rig",
        help="YAML: rig: {kvp: [50], wedge_mm: 50, dose, pixel_size_mm, "
        "...}, thickness_mm, dark_level, flat_level, custom_alloys [default: none]",
    ),
    kvp: list[float] | None = typer.Option(
        None, help="tube kVp, one per channel (repeat for a multi-page TIFF)" + NEEDED
    ),
    wedge_mm: float | None = typer.Option(None, help="wedge thickness at its thick end (mm)" + NEEDED),
    dose: float | None = typer.Option(
        None, help="detected photons per pixel, open beam [default: the --rig YAML's, else not recorded]"
    ),
    pixel_size_mm: float | None = typer.Option(
        None, help="detector pixel pitch (mm) [default: the --rig YAML's, else not recorded]"
    ),
    thickness_mm: float | None = typer.Option(None, help="plate thickness (mm) of files without their own" + NEEDED),
    dark_level: list[float] | None = typer.Option(
        None, help="dark level (ADU) per channel where no dark frame" + NEEDED
    ),
    flat_level: list[float] | None = typer.Option(
        None, help="flat level (ADU) per channel where no flat frame" + NEEDED
    ),
    alloys: Path | None = typer.Option(
        None, "--alloys", help="YAML defining extra alloys (as `physics --alloys`) [default: the standard alloys only]"
    ),
    allow_8bit: bool = typer.Option(
        False, "--allow-8bit", help="import 8-bit images (recorded as 8-bit in the sidecar); refused by default"
    ),
    details: bool = typer.Option(False, "--details", help="list every rejected file with its reason"),
    accept_size: list[str] | None = SizeOpt,
    wait: float = WaitOpt,
    seed: int = typer.Option(0, help="seed of the manifest's split assignment"),
    manifest: bool = typer.Option(True, help="refresh manifest.csv of a local store (split folders are kept)"),
) -> None:
    """Import a lab's captures (16-bit TIFF/PNG, multi-page TIFF for several kVp) with their labels, rig
    settings and dark/flat levels, and the reference captures under SOURCE/reference/ (dark/, flat/,
    wedge-<mm>mm/, <alloy>-<mm>mm/) for `alloynet rig fit`; re-runs are idempotent."""
    from alloynet.captures.importing import ImportUsageError, load_settings, note_lines, problem_lines, run_import
    from alloynet.captures.stores import LocalStore, StoreError, WriterBusy, open_store

    if source.is_file() and source.suffix.lower() == ".csv":
        if labels is not None:
            _line(f"error: {source} is a labels CSV and --labels {labels} gives another; give one", EXIT_USAGE)
        source, labels = source.parent, source
    try:
        extra = {}
        if alloys is not None:
            import yaml

            try:
                extra = yaml.safe_load(alloys.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ImportUsageError(f"{alloys}: cannot read as YAML ({' '.join(str(exc).split())})") from None
        settings = load_settings(
            rig,
            kvp=kvp or None,
            wedge_mm=wedge_mm,
            dose=dose,
            pixel_size_mm=pixel_size_mm,
            thickness_mm=thickness_mm,
            dark_level=dark_level or None,
            flat_level=flat_level or None,
            allow_8bit=allow_8bit or None,
            custom_alloys=extra or None,
        )
        st = open_store(store)
        res = run_import(
            source, st, settings, labels, accepted_sizes=_sizes(accept_size), wait=wait, ignore=(rig,) if rig else ()
        )
        df = None
        if manifest and isinstance(st, LocalStore) and res.usable:
            from alloynet.data.manifest import refresh_manifest

            df, changed = refresh_manifest(st, seed, wait=wait, splits=res.splits)
    except ImportUsageError as exc:
        _line(f"error: {exc}", EXIT_USAGE)
    except WriterBusy as exc:
        _line(f"error: {exc}", EXIT_BUSY)
    except (StoreError, OSError) as exc:
        _line(
            f"error: {' '.join(str(exc).split())}; what was stored before is kept, a re-run goes on from there",
            EXIT_NOTHING,
        )
    except ValueError as exc:  # a malformed store URI
        _line(f"error: {exc}", EXIT_USAGE)
    root = source.resolve()
    if details:
        for r in res.rejected:
            _line(f"rejected {r.path}: {r.reason}")
    for text in problem_lines(res, root) + note_lines(res, root):
        _line(text)
    _print_table(res)
    if df is not None:
        _line(f"manifest: {len(df)} captures ({'updated' if changed else 'unchanged'})")
    if not res.usable and not res.references.sessions:
        _line(f"error: nothing could be imported from {source}", EXIT_NOTHING)
    if res.rejected:
        kinds = len({(r.problem, r.fix) for r in res.rejected})
        _line(
            f"error: {len(res.rejected)} file(s) not imported ({kinds} problem(s) above); fix and re-run: what "
            "is stored stays, a re-run imports the rest",
            EXIT_NOTHING,
        )


def register(app: typer.Typer) -> None:
    app.command("import")(import_captures)
