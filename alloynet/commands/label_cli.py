"""`alloynet label import RESULTS.csv`: the lab's verdicts on the verification list become labels."""

from __future__ import annotations

from pathlib import Path

import typer

from alloynet import settings
from alloynet.console import make_console, printable

console = make_console()
label_app = typer.Typer(no_args_is_help=True)


def _fail(message: str, code: int = 1) -> None:
    console.print(f"error: {printable(' '.join(message.split()))}", markup=False, highlight=False)
    raise typer.Exit(code)


@label_app.command("import")
def import_cmd(
    results: Path = typer.Argument(
        ...,
        help="the verification list with the lab's columns filled in: "
        "capture_id, alloy, who, method [, nominal_thickness_mm, "
        "thickness_mm, verified_at]",
    ),
    store: str | None = typer.Option(
        None, "--store", "-s", help="the capture store (data dir) [default: $ALLOYNET_HOME/data]"
    ),
    seed: int = typer.Option(0, "--seed", help="the manifest's split seed"),
    wait: float = typer.Option(0.0, "--wait", help="seconds to wait for another writer"),
) -> None:
    """Apply each verdict as a recorded relabel (who, when, method kept in the capture's history) and rebuild
    the manifest: the verified captures are training data from now on."""
    from alloynet.captures.image import CaptureError
    from alloynet.captures.stores import LocalStore, StoreError, WriterBusy, writer_lock
    from alloynet.commands.data_cli import EXIT_BUSY
    from alloynet.data.manifest import refresh_manifest
    from alloynet.monitor.verify import import_verdicts, read_verdicts

    try:
        verdicts, not_verified = read_verdicts(results)
        st = LocalStore(store or settings.data_dir())
        with writer_lock(st, "label import", wait):
            res = import_verdicts(st, verdicts, source=f"alloynet label import {results.name}")
            df, changed = refresh_manifest(st, seed, lock=False)
    except CaptureError as exc:
        _fail(f"{exc}; nothing was changed")
    except WriterBusy as exc:
        _fail(str(exc), EXIT_BUSY)
    except StoreError as exc:
        _fail(str(exc))
    for cid, rev in res.applied.items():
        console.print(printable(f"labelled {cid} (revision {rev})"), markup=False, highlight=False)
    if not_verified:
        console.print(
            printable(f"{len(not_verified)} row(s) without a verdict: {', '.join(not_verified)}"),
            markup=False,
            highlight=False,
        )
    console.print(res.summary(), markup=False, highlight=False)
    console.print(f"manifest: {len(df)} captures ({'updated' if changed else 'unchanged'})", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(label_app, name="label", help="Lab verdicts: import the verification list's results as labels.")
