"""What the Prefect UI shows: evaluation tables, the decision, plots and reports as keyed artifacts.

Keys (lowercase, digits, dashes) are stable, so the Artifacts page keeps each one's history across nights.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

from prefect.artifacts import (create_image_artifact, create_link_artifact, create_markdown_artifact,
                               create_table_artifact)

METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "thickness_mae_mm", "a0_mae", "ceiling_accuracy")
PLOT_SUFFIXES = (".png", ".svg")


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    return v


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def ingest_artifacts(report: Mapping[str, Any]) -> None:
    md = [f"### Ingest from `{report['source']}`", "",
          "| new | duplicate | quarantined | vanished | captures in manifest | labelled | manifest |",
          "|---|---|---|---|---|---|---|",
          f"| {len(report['new'])} | {len(report['duplicates'])} | {len(report['quarantined'])} | "
          f"{len(report['vanished'])} | {report['captures']} | {report['labelled']} | "
          f"{'updated' if report['manifest_changed'] else 'unchanged'} `{(report['dataset'] or {}).get('manifest_hash', '')[:12]}` |"]
    create_markdown_artifact("\n".join(md), key="ingest-summary", description="captures pulled tonight")
    if report["quarantined"]:
        create_table_artifact([{"object": k, "reason": v} for k, v in report["quarantined"].items()],
                              key="ingest-quarantine", description="captures quarantined tonight, with reasons")


def evaluation_artifacts(results: Mapping[str, Mapping[str, Any]], report_dirs: Mapping[str, str],
                         champion_label: Optional[str]) -> None:
    """One table row per model (candidates and the champion), per-class recall, and the plots."""
    rows = []
    for name, m in results.items():
        row = {"model": name + (" (champion)" if name == champion_label else "")}
        row.update({k: _fmt(m.get(k)) for k in METRICS})
        rows.append(row)
    create_table_artifact(rows, key="nightly-evaluation",
                          description="held-out (frozen, balanced) test set: candidates vs the champion")
    classes = sorted({c for m in results.values() for c in (m.get("per_class") or {})})
    if classes:
        per = [{"class": c, **{name: _fmt((m.get("per_class") or {}).get(c, {}).get("recall"))
                               for name, m in results.items()}} for c in classes]
        create_table_artifact(per, key="nightly-recall-per-class", description="recall per alloy on the test set")
    for name, d in report_dirs.items():
        folder = Path(d)
        if not folder.is_dir():
            continue
        create_link_artifact(folder.resolve().as_uri(), link_text=f"{name}: evaluation report",
                             key=f"report-{_slug(name)}", description=f"plots and reports of {name}")
        for plot in sorted(p for p in folder.rglob("*") if p.suffix in PLOT_SUFFIXES)[:6]:
            create_image_artifact(plot.resolve().as_uri(), key=f"plot-{_slug(name)}-{_slug(plot.stem)}",
                                  description=f"{name}: {plot.name}")


def decision_artifact(decision: Mapping[str, Any], outcome: str) -> None:
    lines = [f"## {'Promoted' if decision['promote'] else 'Not promoted'}: `{decision['challenger']}`", "",
             f"Champion before: `{decision['champion'] or 'none'}`  ", f"Outcome: {outcome}", "", "### Why"]
    lines += [f"- {r}" for r in decision["reasons"]]
    if decision.get("deltas"):
        lines += ["", "| metric | challenger - champion |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in decision["deltas"].items()]
    create_markdown_artifact("\n".join(lines), key="nightly-decision", description="the promotion decision")


def skipped_artifact(reason: str) -> None:
    create_markdown_artifact(f"## No retrain tonight\n\n{reason}", key="nightly-decision",
                             description="the promotion decision")
