"""`alloynet line ...`: what the line was told (the record), and the nightly monitoring without Prefect."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone

import typer

from alloynet.console import make_console, printable

console = make_console()
line_app = typer.Typer(no_args_is_help=True)

StoreOpt = typer.Option(
    None,
    "--store",
    "-s",
    help="where the line's record is kept: a directory or "
    "s3://bucket/prefix (default $ALLOYNET_LINE_RECORD, else $ALLOYNET_HOME/data)",
)


def _fail(message: str, code: int = 1) -> None:
    console.print(f"error: {printable(' '.join(message.split()))}", markup=False, highlight=False)
    raise typer.Exit(code)


def line_store(store: str | None) -> str:
    from alloynet import settings

    return store or os.environ.get("ALLOYNET_LINE_RECORD") or settings.data_dir()


def parse_when(text: str, what: str = "--since") -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or an age: 30m, 12h, 7d."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", text)
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return datetime.now(timezone.utc) - timedelta(**{unit: float(m.group(1))})
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected an ISO date/time (2026-12-07, 2026-12-07T06:00) or an age (30m, 12h, 7d)",
            param_hint=what,
        ) from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


@line_app.command("log")
def log_cmd(
    since: str = typer.Option("24h", "--since", help="from: ISO date/time or an age (30m, 12h, 7d)"),
    until: str | None = typer.Option(None, "--until", help="to (exclusive); default now"),
    store: str | None = StoreOpt,
    source: str | None = typer.Option(None, "--source", help="only 'line' answers or 'nightly' scores [default: both]"),
    as_json: bool = typer.Option(False, "--json", help="one JSON record per line"),
) -> None:
    """The answers the line was given, oldest first: time, capture, model version, answer, set, flags, latency."""
    from alloynet.captures.stores import StoreError
    from alloynet.commands.data_cli import missing_local_store
    from alloynet.monitor.record import read_records

    where = line_store(store)
    missing = missing_local_store(where)
    if missing is not None:
        _fail(
            f"no line record at {missing} (looked there: --store, $ALLOYNET_LINE_RECORD or "
            "$ALLOYNET_HOME picks another; clients record the line's answers there when $ALLOYNET_LINE_RECORD is set)"
        )
    try:
        res = read_records(where, parse_when(since), parse_when(until, "--until") if until else None, source)
    except StoreError as exc:
        _fail(str(exc))
    for r in res.records:
        if as_json:
            console.print(
                printable(json.dumps(r, separators=(",", ":"))), markup=False, highlight=False, soft_wrap=True
            )
            continue
        pset = ",".join(r.get("prediction_set") or [])
        answer = (
            f"{r.get('alloy')} p={float(r.get('confidence') or 0):.3f} set={{{pset}}} {r.get('group')}"
            if r.get("status") != "refused"
            else f"refused: {r.get('error', '')}"
        )
        flags = ",".join(r.get("flags") or []) or "-"
        who = r.get("capture_id") or (r.get("image_sha256") or "")[:12]
        console.print(
            printable(
                f"{r['at'][:23]}  {who}  {r.get('model', '')}:{r.get('model_version', '')}  {answer}  "
                f"status={r.get('status')} flags={flags} {float(r.get('latency_ms') or 0):.2f} ms "
                f"[{r.get('source')}]"
            ),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for s in res.skipped:
        console.print(printable(f"skipped {s}"), markup=False, highlight=False)
    if not as_json:
        console.print(printable(f"{len(res.records)} record(s) in {where}"), markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(line_app, name="line", help="The line's record: what it was told; nightly monitoring.")
