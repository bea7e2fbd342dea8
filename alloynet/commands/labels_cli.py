"""What `alloynet data relabel` and `alloynet data history` do (declared in data_cli, run here): label
corrections as recorded revisions."""

from __future__ import annotations

from pathlib import Path

import typer

from alloynet.console import make_console, printable

console = make_console()


def _fail(message: str, code: int = 1) -> None:
    console.print(f"error: {printable(' '.join(message.split()))}", markup=False, highlight=False)
    raise typer.Exit(code)


def run_relabel(store: str, corrections: Path, seed: int = 0, wait: float = 0.0) -> None:
    """Apply the corrections under the writer lock, rebuild the manifest, print what changed."""
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


def show_history(store: str, capture_id: str) -> None:
    """Print the labels now and every revision."""
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
    console.print(
        printable(f"{capture_id}: " + ", ".join(f"{k}={v}" for k, v in now.items())), markup=False, highlight=False
    )
    if not revs:
        console.print("no revisions: the labels are as ingested", markup=False)
    for r in revs:
        changes = ", ".join(f"{f}: {old!r} -> {new!r}" for f, (old, new) in r["changes"].items())
        console.print(
            printable(
                f"revision {r['revision']}  {r['at']}  by {r['who']}: {changes}  ({r['why']}; {r.get('source', '')})"
            ),
            markup=False,
            highlight=False,
        )
