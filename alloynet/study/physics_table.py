"""What physics allows: separability and the physics bracket across dose, kVp settings and thickness knowledge."""

from __future__ import annotations

from collections.abc import Sequence

from alloynet.physics.separability import separability
from alloynet.physics.simulator import RigConfig

KEY_PAIRS = [("Al5083", "Al6082"), ("Al1050", "Al5083"), ("Al1050", "Al6082"), ("Al2017", "Al7075")]


def physics_limits(
    rig: RigConfig,
    thicknesses_mm: Sequence[float] | None,
    doses: Sequence[float] = (1e3, 1e4, 1e5),
    kvp_sets: Sequence[Sequence[float]] = ((50.0,), (40.0, 50.0, 60.0)),
    plates: int = 150,
    seed: int = 0,
    thickness_range_mm: Sequence[float] | None = None,
) -> tuple[list[dict], str]:
    """d' per key pair and the five-class physics bracket across dose and kVp, for a thickness prior given as
    nominal values or a range. Each row's ``ceiling`` is the bracket's lower edge, ``upper`` its upper edge."""
    rows = []
    for kvps in kvp_sets:
        for dose in doses:
            r = separability(
                rig.model_copy(update={"dose": dose, "kvp": list(kvps)}),
                thicknesses_mm=thicknesses_mm,
                thickness_range_mm=thickness_range_mm,
                plates=plates,
                seed=seed,
            )
            row = {
                "kvp": "/".join(f"{k:g}" for k in kvps),
                "dose": dose,
                "ceiling": r.ceiling_accuracy,
                "upper": r.ceiling_upper,
                "se": max(r.ceiling_se, r.ceiling_upper_se),
            }
            for a, b in KEY_PAIRS:
                p = next(p for p in r.pairs if {p.a, p.b} == {a, b})
                row[f"{a[2:]}/{b[2:]}"] = (p.d_known_nominal, p.d_known, p.d_unknown, p.bayes_error_unknown)
            rows.append(row)
    head = (
        ["kVp", "dose (photons/px)"]
        + [f"{a[2:]} vs {b[2:]}: d' nominal / t known / t unknown (Bayes err.)" for a, b in KEY_PAIRS]
        + ["5-class bracket"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["kvp"], f"{row['dose']:.0e}"]
        for a, b in KEY_PAIRS:
            dn, dk, du, be = row[f"{a[2:]}/{b[2:]}"]
            cells.append(f"{dn:.1f} / {dk:.2f} / {du:.2f} ({be:.2f})")
        upper = row.get("upper", row["ceiling"])
        cells.append(f"{row['ceiling']:.3f}-{upper:.3f} ± {row.get('se', float('nan')):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)
