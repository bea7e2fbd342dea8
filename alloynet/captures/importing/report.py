"""An import's outcome as a compiler reports: one line per distinct problem with its count and up to three
example files, then what fixes it; warnings and notes the same way; nothing repeated per file."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from alloynet.captures.importing.plan import Reject
from alloynet.captures.importing.run import ImportResult

EXAMPLES = 3


def _rel(path: str, root: Path | None) -> str:
    if root is None:
        return path
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return os.path.relpath(path, root) if os.path.isabs(path) else path


def _examples(paths: list[str], root: Path | None) -> str:
    shown = ", ".join(_rel(p, root) for p in paths[:EXAMPLES])
    return shown + (f", ... ({len(paths) - EXAMPLES} more)" if len(paths) > EXAMPLES else "")


def grouped_rejects(rejected: list[Reject]) -> list[tuple[str, str, list[Reject]]]:
    """(problem, fix, files) per distinct problem, the commonest first."""
    groups: dict[tuple[str, str], list[Reject]] = {}
    for r in rejected:
        groups.setdefault((r.problem, r.fix), []).append(r)
    return [(p, f, rs) for (p, f), rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def problem_lines(result: ImportResult, root: Path | None = None) -> list[str]:
    """``error: <problem>: <n> file(s): a, b, c`` (with each example's detail where files differ in it), then
    ``  fix: ...``."""
    lines = []
    for problem, fix, rs in grouped_rejects(result.rejected):
        details = {r.detail for r in rs}
        n = f"{len(rs)} file{'s' if len(rs) > 1 else ''}"
        if len(details) == 1 and next(iter(details)):
            lines.append(f"error: {problem} ({next(iter(details))}): {n}: {_examples([r.path for r in rs], root)}")
        elif len(details) == 1:
            lines.append(f"error: {problem}: {n}: {_examples([r.path for r in rs], root)}")
        else:
            shown = "; ".join(
                f"{_rel(r.path, root)} ({r.detail})" if r.detail else _rel(r.path, root) for r in rs[:EXAMPLES]
            )
            more = f"; ... ({len(rs) - EXAMPLES} more)" if len(rs) > EXAMPLES else ""
            lines.append(f"error: {problem}: {n}: {shown}{more}")
        if fix:
            lines.append("  fix: " + fix.replace("\n", "\n       "))
    return lines


def note_lines(result: ImportResult, root: Path | None = None) -> list[str]:
    """What was done without being asked: files skipped, settings filled from defaults, 8-bit imports, and
    the reference captures stored for `alloynet rig fit`."""
    lines = []
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} file(s) that are not images: {_examples(result.skipped, root)}")
    if result.eight_bit:
        lines.append(
            f"warning: {len(result.eight_bit)} 8-bit image(s) imported (--allow-8bit; bit_depth 8 in "
            f"their sidecars): {_examples(result.eight_bit, root)}"
        )
    if result.defaults and result.usable:
        shown = ", ".join(f"{k}={v}" for k, v in result.defaults.items() if v is not None)
        unset = [k for k, v in result.defaults.items() if v is None]
        lines.append(
            f"defaults used (not given in options, --rig YAML or CSV): {shown}"
            + (f"; not recorded: {', '.join(unset)}" if unset else "")
        )
    refs = result.references
    if refs.sessions or refs.plates:
        wedges = ", ".join(f"{n} of the {w:g} mm wedge alone" for w, n in sorted(refs.wedge_frames.items()))
        plates: Counter[str] = Counter()
        for (alloy, t), n in refs.plates.items():
            plates[f"{alloy} {t:g} mm"] += n
        lines.append(
            f"references for `alloynet rig fit`: {len(refs.sessions)} session(s)"
            + (f", {wedges}" if wedges else ", no wedge-alone frames")
            + (
                f"; reference plates: {', '.join(f'{k} x{n}' for k, n in sorted(plates.items()))}"
                if plates
                else "; no reference plates"
            )
            + (" (levels only: no dark/flat frames)" if refs.levels_only else "")
        )
    return lines
