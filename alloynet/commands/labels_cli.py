"""`alloynet data relabel` and `alloynet data history`: label corrections as recorded revisions."""
from __future__ import annotations

from pathlib import Path

import typer

from alloynet.console import make_console, printable

console = make_console()


def _fail(message: str, code: int = 1) -> None:
    console.print(f"error: {printable(' '.join(message.split()))}", markup=False, highlight=False)
    raise typer.Exit(code)


def relabel_cmd(store: str = typer.Argument(..., help="the data directory (ingest's destination)"),
                corrections: Path = typer.Argument(..., help="CSV with the header capture_id,field,value,who,why; "
                                                             "field: alloy, plate_id, nominal_thickness_mm or "
                                                             "thickness_mm"),
                seed: int = 0, wait: float = typer.Option(0.0, help="seconds to wait for another writer")) -> None:
    """Apply label corrections: each changed capture gets a recorded revision (who, why, old and new values),
    its sidecar is rewritten and the manifest rebuilt. Nothing is written if any row is wrong."""
    from alloynet.captures.image import CaptureError
    from alloynet.captures.labels import read_corrections, relabel
    from alloynet.captures.stores import LocalStore, StoreError, WriterBusy, writer_lock
    from alloynet.commands.data_cli import EXIT_BUSY
    from alloynet.data.manifest import refresh_manifest

    try:
        rows = read_corrections(corrections)
        st = LocalStore(store)
        with writer_lock(st, "relabel", wait):
            res = relabel(st, rows, source=f"alloynet data relabel {corrections.name}")
            df, changed = refresh_manifest(st, seed, lock=False)
    except CaptureError as exc:
        _fail(f"{exc}; nothing was changed")
    except WriterBusy as exc:
        _fail(str(exc), EXIT_BUSY)
    except StoreError as exc:
        _fail(str(exc))
    for cid, rev in res.applied.items():
        console.print(printable(f"relabelled {cid} (revision {rev})"), markup=False, highlight=False)
    for folder in res.released:
        console.print(printable(f"released {folder}"), markup=False, highlight=False)
    console.print(res.summary(), markup=False, highlight=False)
    console.print(f"manifest: {len(df)} captures ({'updated' if changed else 'unchanged'})", markup=False)


def history_cmd(store: str = typer.Argument(..., help="the data directory"),
                capture_id: str = typer.Argument(..., help="the capture")) -> None:
    """A capture's labels now and every recorded revision: when, who, why, each field's old and new value."""
    from alloynet.captures.format import parse_sidecar
    from alloynet.captures.image import CaptureError
    from alloynet.captures.labels import history, label_values
    from alloynet.captures.layout import sidecar_key
    from alloynet.captures.stores import LocalStore, ObjectMissing

    st = LocalStore(store)
    try:
        key = sidecar_key(capture_id)
        now = label_values(parse_sidecar(st.get(key), f"{st.uri}/{key}"))
        revs = history(st, capture_id)
    except ObjectMissing:
        _fail(f"{st.uri}: no stored capture {capture_id!r}")
    except (CaptureError, ValueError) as exc:
        _fail(str(exc))
    console.print(printable(f"{capture_id}: " + ", ".join(f"{k}={v}" for k, v in now.items())),
                  markup=False, highlight=False)
    if not revs:
        console.print("no revisions: the labels are as ingested", markup=False)
    for r in revs:
        changes = ", ".join(f"{f}: {old!r} -> {new!r}" for f, (old, new) in r["changes"].items())
        console.print(printable(f"revision {r['revision']}  {r['at']}  by {r['who']}: {changes}  ({r['why']}; "
                                f"{r.get('source', '')})"), markup=False, highlight=False)


def add_label_commands(data_app: typer.Typer) -> None:
    data_app.command("relabel")(relabel_cmd)
    data_app.command("history")(history_cmd)
