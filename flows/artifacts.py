"""What the Prefect UI shows: the nightly summary, evaluation tables, reports with their plots, the decision.

Keys are stable (lowercase, digits, dashes) and never carry a capture name or a version number, so the
Artifacts page keeps one history per key across nights:

| key | on | what |
|---|---|---|
| `nightly-summary` | nightly | ingest, candidates vs the bracket, the decision and its interval, champion, links |
| `nightly-decision` | promote (nightly when a night fails) | promoted or not and why; "failed at <step>" |
| `champion-confusion`, `champion-report` | nightly | the champion after tonight: confusion matrix, full report |
| `nightly-evaluation`, `nightly-recall-per-class` | evaluate | every model on the frozen test set, beside the bracket |
| `report-<candidate>`, `report-incumbent` | evaluate | report.md, plots inline (incumbent: the champion again) |
| `<candidate>-confusion`, `-pr`, `-roc`, `-learning-curves`, `-thickness-scatter` | evaluate | plots by importance |
| `ingest-summary`, `ingest-quarantine` | ingest | captures pulled tonight; quarantined ones with reasons |
| `champion-version` | promote | link to the new champion in the model store |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from alloynet.monitor.weekly import to_markdown as line_weekly_markdown
from flows.reports import PublishedReport

IMAGE_ARTIFACTS = {
    "confusion": "confusion",
    "pr": "pr",
    "roc": "roc",
    "learning_curves": "learning-curves",
    "thickness_scatter": "thickness-scatter",
}


def fmt(v: Any, digits: int = 3, sign: bool = False) -> str:
    """A number as people read it: fixed digits, 'n/a' for missing or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return str(v)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def ui_link(path: str) -> str:
    """A link into the Prefect UI: absolute when PREFECT_UI_URL is known, else relative to the UI's root
    (artifacts are read in the UI, where a relative link resolves)."""
    from prefect.settings import PREFECT_UI_URL

    base = (PREFECT_UI_URL.value() or "").rstrip("/")
    return f"{base}/{path.lstrip('/')}"


def artifact_link(artifact_id: UUID | str | None, text: str) -> str:
    return f"[{text}]({ui_link(f'artifacts/artifact/{artifact_id}')})" if artifact_id else text


def run_link(flow_run_id: str | None, text: str) -> str:
    return f"[{text}]({ui_link(f'runs/flow-run/{flow_run_id}')})" if flow_run_id else text


# ---- ingest ---------------------------------------------------------------------------------------------
def ingest_warnings(report: Mapping[str, Any]) -> list[str]:
    """What a person should look at: an empty source, quarantined or vanished captures."""
    out = []
    if report.get("source_captures") == 0:
        out.append(
            f"the source `{report['source']}` holds no captures (nothing under `captures/`): wrong prefix "
            "or bucket? Nothing was ingested."
        )
    if report["quarantined"]:
        out.append(f"{len(report['quarantined'])} capture(s) quarantined (see `ingest-quarantine`).")
    if report["vanished"]:
        out.append(f"{len(report['vanished'])} capture(s) vanished between listing and download.")
    return out


def ingest_artifacts(report: Mapping[str, Any]) -> dict[str, UUID]:
    manifest_hash = (report["dataset"] or {}).get("manifest_hash", "")
    md = [
        f"### Ingest from `{report['source']}`",
        "",
        "| at the source | new | duplicate | quarantined | vanished | captures in manifest | labelled | manifest |",
        "|---|---|---|---|---|---|---|---|",
        f"| {report.get('source_captures', 'n/a')} | {len(report['new'])} | {len(report['duplicates'])} | "
        f"{len(report['quarantined'])} | {len(report['vanished'])} | {report['captures']} | {report['labelled']} | "
        f"{'updated' if report['manifest_changed'] else 'unchanged'} `{manifest_hash[:12]}` |",
    ]
    warnings = ingest_warnings(report)
    if warnings:
        md += [""] + [f"- **warning**: {w}" for w in warnings]
    ids = {
        "ingest-summary": create_markdown_artifact(
            "\n".join(md), key="ingest-summary", description="captures pulled tonight"
        )
    }
    if report["quarantined"]:
        ids["ingest-quarantine"] = create_table_artifact(
            [{"object": k, "reason": v} for k, v in report["quarantined"].items()],
            key="ingest-quarantine",
            description="captures quarantined tonight, with reasons",
        )
    return ids


# ---- evaluation -----------------------------------------------------------------------------------------
def _bracket(m: Mapping[str, Any]) -> str:
    """The physics bracket of a report's metrics: lower-upper ± their errors (a bare lower edge in older ones)."""
    if m.get("ceiling_upper") is None:
        return fmt(m.get("ceiling_accuracy"))
    return (
        f"{fmt(m.get('ceiling_lower'))}-{fmt(m.get('ceiling_upper'))} ± "
        f"{fmt(max(m.get('ceiling_lower_se') or 0, m.get('ceiling_upper_se') or 0))}"
    )


def evaluation_rows(results: Mapping[str, Mapping[str, Any]], champion_label: str | None) -> list[dict]:
    rows = []
    for name, m in results.items():
        rows.append(
            {
                "model": name + (" (champion before tonight)" if name == champion_label else ""),
                "balanced accuracy": fmt(m.get("balanced_accuracy")),
                "physics bracket": _bracket(m),
                "against the bracket": m.get("ceiling_position") or "n/a",
                "accuracy": fmt(m.get("accuracy")),
                "macro F1": fmt(m.get("macro_f1")),
                "thickness MAE (mm)": fmt(m.get("thickness_mae_mm"), 3),
                "A0 MAE": fmt(m.get("a0_mae"), 4),
                "test captures": m.get("n", "n/a"),
            }
        )
    return rows


def recall_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """Per alloy: each model's recall and the physics bracket's lower edge (the mixture observer's)."""
    classes = sorted({c for m in results.values() for c in (m.get("per_class") or {})})
    ideal = next((m["ceiling_recall"] for m in results.values() if m.get("ceiling_recall")), {})
    rows = []
    for c in classes:
        row = {
            "alloy": c,
            "test captures": next(
                (m["per_class"][c].get("support") for m in results.values() if c in (m.get("per_class") or {})), None
            ),
        }
        row.update({name: fmt((m.get("per_class") or {}).get(c, {}).get("recall")) for name, m in results.items()})
        row["physics (lower edge)"] = fmt(ideal.get(c))
        rows.append(row)
    return rows


def evaluation_artifacts(
    results: Mapping[str, Mapping[str, Any]], reports: Mapping[str, PublishedReport], champion_label: str | None
) -> dict[str, UUID]:
    """The comparison tables, each model's report (plots inline) and the important plots as images."""
    ids = {
        "nightly-evaluation": create_table_artifact(
            evaluation_rows(results, champion_label),
            key="nightly-evaluation",
            description="held-out (frozen, balanced) test set: candidates vs the champion, beside the physics bracket",
        )
    }
    if any(m.get("per_class") for m in results.values()):
        ids["nightly-recall-per-class"] = create_table_artifact(
            recall_rows(results),
            key="nightly-recall-per-class",
            description="recall per alloy on the test set; 'physics (lower edge)' is the mixture observer's",
        )
    for name, rep in reports.items():
        key = "report-incumbent" if name == champion_label else f"report-{slug(name)}"
        ids[key] = report_artifact(rep, key, f"evaluation report of {name}")
        if name == champion_label:
            continue
        for rel in rep.plots:
            stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            if rel.startswith("plots/") and stem in IMAGE_ARTIFACTS and rep.url(rel):
                k = f"{slug(name)}-{IMAGE_ARTIFACTS[stem]}"
                ids[k] = create_image_artifact(rep.url(rel), key=k, description=f"{name}: {stem.replace('_', ' ')}")
    return ids


def report_artifact(rep: PublishedReport, key: str, description: str) -> UUID:
    head = f"*Report files: `{rep.location}`*\n\n"
    return create_markdown_artifact(head + (rep.markdown or "(no report.md)"), key=key, description=description)


# ---- the decision -----------------------------------------------------------------------------------------
def interval_sentence(u: Mapping[str, Any] | None) -> str:
    if not u:
        return ""
    if u.get("error"):
        return f"No interval: {u['error']}"
    n = ", ".join(f"{c} {k}" for c, k in u["n_per_class"].items())
    pct = f"{100 * u['level']:g}%"
    if u.get("margin") is None:
        return (
            f"Balanced accuracy {fmt(u['challenger'])}, {pct} bootstrap interval {fmt(u['challenger_low'])} to "
            f"{fmt(u['challenger_high'])} (test captures per class: {n})."
        )
    return (
        f"Margin {fmt(u['margin'], sign=True)}, {pct} bootstrap interval {fmt(u['margin_low'], sign=True)} to "
        f"{fmt(u['margin_high'], sign=True)}; the challenger does not win in {100 * u['p_not_better']:.0f}% of "
        f"{u['n_boot']} paired replicates (test captures per class: {n}; seed {u['seed']})."
    )


def decision_artifact(decision: Mapping[str, Any], outcome: str) -> UUID:
    lines = [
        f"## {'Promoted' if decision['promote'] else 'Not promoted'}: `{decision['challenger']}`",
        "",
        f"Champion before: `{decision['champion'] or 'none'}`  ",
        f"Outcome: {outcome}",
        "",
        "### Why",
    ]
    lines += [f"- {r}" for r in decision["reasons"]]
    if decision.get("uncertainty"):
        lines += ["", "### How sure", "", interval_sentence(decision["uncertainty"])]
        lines += [f"- {n}" for n in decision["uncertainty"].get("notes") or []]
    if decision.get("deltas"):
        lines += ["", "| metric | challenger - champion |", "|---|---|"]
        lines += [f"| {k} | {fmt(v, 4, sign=True)} |" for k, v in decision["deltas"].items()]
    return create_markdown_artifact("\n".join(lines), key="nightly-decision", description="the promotion decision")


def skipped_artifact(reason: str) -> UUID:
    return create_markdown_artifact(
        f"## No retrain tonight\n\n{reason}", key="nightly-decision", description="the promotion decision"
    )


WHAT_TO_CHECK = {
    "model store": "the `registry` parameter and that the model store answers "
    "(`alloynet registry list -r <registry>`).",
    "ingest": "the `source` parameter (bucket and prefix exist and hold `captures/*.json`), that the object store "
    "answers at AWS_ENDPOINT_URL, and its credentials; then the ingest subflow's log.",
    "retrain": "the retrain subflow's log (epoch lines, the error), the candidates' configs, free memory and disk on "
    "the worker.",
    "evaluate": "the evaluate subflow's log; whether the champion's artifacts still verify "
    "(`alloynet registry verify <version>`); the report store (ALLOYNET_REPORTS) if publishing failed.",
    "promote": "the promote subflow's log: the export parity check, the packaging tools, the model store. The "
    "transaction rolled back what it had done (`alloynet registry list`).",
    "record": "the data directory's `state/` folder is writable; tonight's captures will count as new tomorrow.",
}


def failure_artifact(step: str, error: str, champion_before: str | None, champion_now: str | None) -> UUID:
    if champion_now == "unknown":
        champ = (
            "the model store could not be read; champion unknown"
            if champion_before == "unknown"
            else f"champion before the night {champion_before or '(none)'}; the model store could not be read "
            "to confirm it is unchanged"
        )
    elif champion_now == champion_before:
        champ = f"champion {champion_before or '(none)'} unchanged"
    else:
        champ = f"champion {champion_before or '(none)'} -> {champion_now} (moved before the failure)"
    md = [
        f"## Failed at {step}; {champ}",
        "",
        f"**Error**: {error}",
        "",
        f"**What to check**: {WHAT_TO_CHECK.get(step, 'the flow run log.')}",
    ]
    return create_markdown_artifact("\n".join(md), key="nightly-decision", description="the promotion decision")


# ---- the nightly summary -----------------------------------------------------------------------------------
def ingested_vs_labelled(
    ing: Mapping[str, Any], new_labelled: int, new_by_split: Mapping[str, int] | None = None
) -> str:
    """Why "N new" at ingest and "M new labelled captures" at retrain differ. ``new_by_split``: tonight's new
    captures counted by their manifest split (train, val, test, unlabelled)."""
    quarantined = f"The {len(ing['quarantined'])} quarantined capture(s) are not in the manifest."
    threshold = (
        f"The retrain threshold counts labelled training/validation captures not trained on before: {new_labelled}"
    )
    if new_by_split:
        fit = int(new_by_split.get("train", 0)) + int(new_by_split.get("val", 0))
        test, unlabelled = int(new_by_split.get("test", 0)), int(new_by_split.get("unlabelled", 0))
        since = f" ({new_labelled - fit} of them from earlier nights)" if new_labelled > fit else ""
        return (
            f"of the {len(ing['new'])} new captures, {fit} are labelled training/validation captures, {test} "
            f"labelled test captures (kept for evaluation, never trained on) and {unlabelled} unlabelled (waiting "
            f"for a lab verdict). {threshold}{since}. {quarantined}"
        )
    unlabelled = int(ing["captures"]) - int(ing["labelled"])
    return (
        f"of the {len(ing['new'])} new captures, {new_labelled} are labelled training/validation captures not "
        f"trained on before: what the retrain threshold counts. The others are unlabelled (waiting for a lab "
        f"verdict; {unlabelled} unlabelled in the manifest) or in the test split, kept for evaluation. "
        f"{quarantined}"
    )


def summary_markdown(s: Mapping[str, Any]) -> str:
    """The nightly run's own page, in one card: see flows.nightly for the fields of ``s``."""
    ing = s.get("ingest") or {}
    lines = [f"## Nightly {s['started']}: {s['headline']}", ""]
    if ing:
        lines.append(
            f"**Ingest** from `{ing['source']}`: {len(ing['new'])} new, {len(ing['duplicates'])} duplicate, "
            f"{len(ing['quarantined'])} quarantined, {len(ing['vanished'])} vanished; the manifest holds "
            f"{ing['captures']} captures ({ing['labelled']} labelled). "
            + artifact_link((s.get("links") or {}).get("ingest-summary"), "ingest details")
        )
        if not ing["new"] and ing.get("source_captures"):
            lines.append(
                f"- nothing new since the last ingest ({ing['source_captures']} captures at the source, "
                "all seen before)."
            )
        if ing["new"] and s.get("new_labelled") is not None:
            lines.append(f"- {ingested_vs_labelled(ing, int(s['new_labelled']), s.get('new_by_split'))}")
        lines += [f"- **warning**: {w}" for w in ingest_warnings(ing)]
        lines.append("")
    if s.get("retrain"):
        lines += [f"**Retrain**: {s['retrain']}", ""]
    if s.get("failed_candidates"):
        lines += [f"- **warning**: candidate `{k}` failed to train: {v}" for k, v in s["failed_candidates"].items()] + [
            ""
        ]
    results = s.get("evaluation") or {}
    if results:
        rec = recall_rows(results)
        lines += [
            "**Test set** (frozen, balanced), captures per alloy: "
            + ", ".join(f"{r['alloy']} {r['test captures']}" for r in rec),
            "",
            "| model | balanced accuracy | physics bracket | against it | macro F1 | thickness MAE (mm) |",
            "|---|---|---|---|---|---|",
        ]
        for r in evaluation_rows(results, s.get("incumbent_label")):
            lines.append(
                f"| {r['model']} | {r['balanced accuracy']} | {r['physics bracket']} | "
                f"{r['against the bracket']} | {r['macro F1']} | {r['thickness MAE (mm)']} |"
            )
        lines += ["", "| recall | " + " | ".join(r["alloy"] for r in rec) + " |", "|---|" + "---|" * len(rec)]
        for name in list(results) + ["physics (lower edge)"]:
            lines.append(f"| {name} | " + " | ".join(r[name] for r in rec) + " |")
        lines.append("")
    d = s.get("decision")
    if d:
        verdict = "promoted" if d["promote"] else "not promoted"
        lines += [f"**Decision**: `{d['challenger']}` {verdict}. " + " ".join(d["reasons"]), ""]
        if d.get("uncertainty"):
            lines += [interval_sentence(d["uncertainty"])] + [f"- {n}" for n in d["uncertainty"].get("notes") or []]
            lines.append("")
    if s.get("error"):
        lines += [
            f"**Failed at {s['failed_step']}**: {s['error']}",
            "",
            f"What to check: {WHAT_TO_CHECK.get(s['failed_step'], 'the flow run log.')}",
            "",
        ]
    lines += [f"**Champion**: {s.get('champion_before') or 'none'} -> {s.get('champion_after') or 'none'}", ""]
    if (s.get("line") or {}).get("weekly"):  # the line's live figures per week (flows/monitor.py: line-weekly)
        lines += ["**The line, week by week** (verified random picks)", "", line_weekly_markdown(s["line"]["weekly"])]
    if s.get("champion_confusion_url"):
        lines += [f"![confusion matrix of the champion]({s['champion_confusion_url']})", ""]
    links = s.get("links") or {}
    parts = [run_link(rid, name) for name, rid in (s.get("subflows") or {}).items()]
    parts += [
        artifact_link(links[k], k)
        for k in (
            "nightly-evaluation",
            "nightly-recall-per-class",
            "nightly-decision",
            "champion-report",
            "champion-confusion",
        )
        if links.get(k)
    ]
    if parts:
        lines.append("**Details**: " + " · ".join(parts))
    return "\n".join(lines) + "\n"


def summary_artifact(s: Mapping[str, Any]) -> UUID:
    return create_markdown_artifact(
        summary_markdown(s),
        key="nightly-summary",
        description="tonight in one card: ingest, candidates vs the physics bracket, decision, champion",
    )


def summary_line(s: Mapping[str, Any]) -> str:
    """The same in one log line."""
    ing = s.get("ingest") or {}
    parts = [s["headline"]]
    if ing:
        parts.append(
            f"ingest {len(ing['new'])} new, {len(ing['quarantined'])} quarantined"
            + (" (source empty)" if ing.get("source_captures") == 0 else "")
        )
    for name, m in (s.get("evaluation") or {}).items():
        parts.append(
            f"{name} balanced accuracy {fmt(m.get('balanced_accuracy'))} (physics bracket "
            f"{_bracket(m)}: {m.get('ceiling_position') or 'n/a'})"
        )
    u = (s.get("decision") or {}).get("uncertainty") or {}
    if u.get("margin") is not None:
        parts.append(
            f"margin {fmt(u['margin'], sign=True)} [{fmt(u['margin_low'], sign=True)}, "
            f"{fmt(u['margin_high'], sign=True)}]"
        )
    parts.append(f"champion {s.get('champion_before') or 'none'} -> {s.get('champion_after') or 'none'}")
    return "nightly summary: " + "; ".join(parts)
