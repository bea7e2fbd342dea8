"""Label changes as recorded revisions: `alloynet data relabel` and `alloynet data history` (declared in
data_cli, run here), and what `alloynet label import` (label_cli) shares with them: writing label changes under
the store's writer lock, the one-line errors and the report of what changed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from alloynet.console import make_console, printable

if TYPE_CHECKING:
    from alloynet.captures.stores import LocalStore

console = make_console()
Applied = TypeVar("Applied")


def fail(message: str, code: int = 1) -> None:
    console.print(f"error: {printable(' '.join(message.split()))}", markup=False, highlight=False)
    raise typer.Exit(code)


def say(line: str) -> None:
    """One plain line: names from a user's file are printed as they are, never as Rich markup."""
    console.print(printable(line), markup=False, highlight=False)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A bad label file, a busy store or a store error ends the command with one line and its exit code; a bad
    file is refused before anything is written."""
    from alloynet.captures.image import CaptureError
    from alloynet.captures.stores import StoreError, WriterBusy
    from alloynet.commands.data_cli import EXIT_BUSY

    try:
        yield
    except CaptureError as exc:
        fail(f"{exc}; nothing was changed")
    except WriterBusy as exc:
        fail(str(exc), EXIT_BUSY)
    except StoreError as exc:
        fail(str(exc))


def write_labels(
    store: str, what: str, apply: Callable[[LocalStore], Applied], seed: int, wait: float
) -> tuple[Applied, int, bool]:
    """``apply`` the label changes to the capture store under its writer lock, then rebuild the manifest in the
    same lock: (what ``apply`` returned, captures in the manifest, whether the manifest changed)."""
    from alloynet.captures.stores import LocalStore, writer_lock
    from alloynet.data.manifest import refresh_manifest

    st = LocalStore(store)
    with writer_lock(st, what, wait):
        res = apply(st)
        df, changed = refresh_manifest(st, seed, lock=False)
    return res, len(df), changed


def report_changes(
    verb: str, applied: dict[str, int], notes: Iterable[str], summary: str, captures: int, changed: bool
) -> None:
    """One line per capture changed (``<verb> <id> (revision N)``), the notes, the summary, the manifest."""
    for cid, rev in applied.items():
        say(f"{verb} {cid} (revision {rev})")
    for line in notes:
        say(line)
    say(summary)
    say(f"manifest: {captures} captures ({'updated' if changed else 'unchanged'})")


def run_relabel(store: str, corrections: Path, seed: int = 0, wait: float = 0.0) -> None:
    """Apply the corrections under the writer lock, rebuild the manifest, print what changed."""
    from alloynet.captures.labels import read_corrections, relabel
    from alloynet.commands.data_cli import require_store

    require_store(store, "data directory")
    with one_line_errors():
        rows = read_corrections(corrections)
        res, captures, changed = write_labels(
            store,
            "relabel",
            lambda st: relabel(st, rows, source=f"alloynet data relabel {corrections.name}"),
            seed,
            wait,
        )
    report_changes("relabelled", res.applied, [f"released {f}" for f in res.released], res.summary(), captures, changed)


def show_history(store: str, capture_id: str) -> None:
    """Print the labels now and every revision."""
    from alloynet.captures.format import parse_sidecar
    from alloynet.captures.image import CaptureError
    from alloynet.captures.labels import history, label_values
    from alloynet.captures.layout import sidecar_key
    from alloynet.captures.stores import LocalStore, ObjectMissing
    from alloynet.commands.data_cli import require_store

    require_store(store, "data directory")
    st = LocalStore(store)
    try:
        key = sidecar_key(capture_id)
        now = label_values(parse_sidecar(st.get(key), f"{st.uri}/{key}"))
        revs = history(st, capture_id)
    except ObjectMissing:
        fail(f"{st.uri}: no stored capture {capture_id!r}")
    except (CaptureError, ValueError) as exc:
        fail(str(exc))
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
