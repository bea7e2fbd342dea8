"""`alloynet label import RESULTS.csv`: the lab's verdicts on the verification list become labels."""

from __future__ import annotations

from pathlib import Path

import typer

from alloynet import settings

label_app = typer.Typer(no_args_is_help=True)


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
    from alloynet.commands.data_cli import require_store
    from alloynet.commands.labels_cli import one_line_errors, report_changes, write_labels
    from alloynet.monitor.verify import import_verdicts, read_verdicts

    with one_line_errors():
        verdicts, not_verified = read_verdicts(results)  # a bad file is refused first, wherever the store is
        require_store(store or settings.data_dir(), "data directory")
        res, captures, changed = write_labels(
            store or settings.data_dir(),
            "label import",
            lambda st: import_verdicts(st, verdicts, source=f"alloynet label import {results.name}"),
            seed,
            wait,
        )
    notes = [f"{len(not_verified)} row(s) without a verdict: {', '.join(not_verified)}"] if not_verified else []
    report_changes("labelled", res.applied, notes, res.summary(), captures, changed)


def register(app: typer.Typer) -> None:
    app.add_typer(label_app, name="label", help="Lab verdicts: import the verification list's results as labels.")
