"""The robustness suite: a trained model on captures shaped unlike its training data, each case beside its
own bracket of what physics allows (``alloynet.physics.bracket``: lower and upper edge).

Every case is a balanced test set simulated from the model's own nominal rig (read from its checkpoint),
seeded, with one thing changed: plates of any thickness, the 1/2/5 mm grid, thicknesses outside the
training range, tube output drifting +-1 % / +-3 % from session to session (calibration sent, and +-3 %
without it) or +-3 % within a session (after its flat was taken), a quarter of the dose, a wedge size the
model never saw, and the second rig (an independently written detector model,
``alloynet.physics.second_rig``). What a line sees differs from training in these ways; a model that only
holds on its training grid fails them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from alloynet.captures.stores import LocalStore
from alloynet.data.manifest import build_manifest, manifest_path, write_manifest
from alloynet.data.simulate import DatasetSpec, simulate_dataset
from alloynet.evaluate.report import evaluate
from alloynet.models.checkpoint import load_checkpoint
from alloynet.physics.second_rig import SecondRigConfig
from alloynet.physics.simulator import RigConfig
from alloynet.serialize import jsonable


class RobustnessCase(BaseModel):
    """One test condition: DatasetSpec fields to change, and whether the captures' calibration is sent."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    spec: dict[str, Any] = Field(default_factory=dict)
    rig: dict[str, Any] = Field(default_factory=dict)
    calibration_sent: bool = True


CASES: tuple[RobustnessCase, ...] = (
    RobustnessCase(
        name="any_thickness", description="plates of any thickness 1-5 mm", spec={"thickness_range_mm": (1.0, 5.0)}
    ),
    RobustnessCase(name="grid_1_2_5", description="plates of 1, 2 or 5 mm", spec={"thicknesses_mm": [1.0, 2.0, 5.0]}),
    RobustnessCase(
        name="unseen_thickness",
        description="plates of 5.5-7 mm (beyond the training range)",
        spec={"thickness_range_mm": (5.5, 7.0)},
    ),
    RobustnessCase(
        name="drift_1pct", description="tube output +-1 % per session, calibration sent", spec={"session_drift": 0.01}
    ),
    RobustnessCase(
        name="drift_3pct", description="tube output +-3 % per session, calibration sent", spec={"session_drift": 0.03}
    ),
    RobustnessCase(
        name="drift_3pct_no_calibration",
        description="tube output +-3 % per session, calibration not sent",
        spec={"session_drift": 0.03},
        calibration_sent=False,
    ),
    RobustnessCase(
        name="drift_in_session_3pct",
        description="tube output +-3 % per capture after its session's flat "
        "(seen only through an open-beam strip, if the rig images one)",
        spec={"capture_drift": 0.03},
    ),
    RobustnessCase(name="quarter_dose", description="a quarter of the training dose", rig={"dose_factor": 0.25}),
    RobustnessCase(
        name="unseen_wedge", description="a 60 mm wedge (trained on 50 and 70 mm)", spec={"wedges_mm": [60.0]}
    ),
    RobustnessCase(
        name="second_rig",
        description="the second rig: its own scatter, heel, PSF, gain map and noise",
        spec={"simulator": "second_rig"},
    ),
)


def case_named(name: str) -> RobustnessCase:
    for c in CASES:
        if c.name == name:
            return c
    raise ValueError(f"unknown robustness case {name!r}; expected one of {[c.name for c in CASES]}")


def case_spec(case: RobustnessCase, rig: RigConfig, base: dict[str, Any]) -> DatasetSpec:
    """``base`` (DatasetSpec fields) with the case's change applied: its thickness prior replaces the base's,
    its rig fields (``dose_factor`` scales the dose) the rig's."""
    r = rig.model_dump()
    factor = case.rig.get("dose_factor")
    r.update({k: v for k, v in case.rig.items() if k != "dose_factor"})
    if factor:
        r["dose"] = rig.dose * factor
    if case.spec.get("simulator", base.get("simulator", "alloynet")) != "alloynet":
        r["open_beam_rows"] = 0  # only alloynet's simulator images an open-beam strip
    fields = dict(base)
    if {"thicknesses_mm", "thickness_range_mm"} & set(case.spec):
        fields.pop("thicknesses_mm", None)
        fields.pop("thickness_range_mm", None)
    return DatasetSpec.model_validate({**fields, **case.spec, "rig": r})


def _spec(case: RobustnessCase, rig: RigConfig, plates_per_class: int, seed: int) -> DatasetSpec:
    """A balanced data set, every plate in the test split, the case's change applied."""
    return case_spec(
        case,
        rig,
        {
            "n_max": plates_per_class,
            "imbalance_ratio": 1.0,
            "imbalance": "balanced",
            "captures_per_plate": 1,
            "test_fraction": 0.0,
            "seed": seed,
            "id_prefix": f"rb-{case.name.replace('_', '-')}",
        },
    )


def held_out_manifest(store: LocalStore, seed: int, calibration_sent: bool):
    """Every capture of ``store`` in the test split; without its calibration when it is not sent."""
    df = build_manifest(store, seed=seed, test_fraction=0.0, val_fraction=0.0)
    df["split"] = "test"
    if not calibration_sent:  # as a client that does not send it: zeros, the model falls back and says so
        df["dark_adu"] = ";".join(["0"] * int(df.channels.iloc[0]))
        df["flat_adu"] = df["dark_adu"]
    return df


def capture_rigs(spec: DatasetSpec) -> dict[float, object] | None:
    """The rig model that took a data set's captures, per wedge, when it is not the nominal alloynet rig
    (the second rig): the ceiling and the physics fit use it. None for alloynet's own simulator."""
    if spec.simulator != "second_rig":
        return None
    return {w: SecondRigConfig.from_nominal(spec.rig.model_copy(update={"wedge_mm": w})) for w in spec.wedges_mm}


def run_case(
    checkpoint: str | Path,
    case: RobustnessCase,
    out_dir: str | Path,
    plates_per_class: int = 60,
    seed: int = 1000,
    with_ceiling: bool = True,
    ceiling_kw: dict | None = None,
) -> dict[str, Any]:
    """Simulate the case's test set into ``out_dir/data`` and evaluate ``checkpoint`` on it (report in
    ``out_dir/report``); returns the headline numbers."""
    ckpt = load_checkpoint(checkpoint)
    rig = RigConfig.model_validate(ckpt["model_spec"]["rig"])
    out = Path(out_dir)
    store = LocalStore(out / "data")
    spec = _spec(case, rig, plates_per_class, seed)
    if not any(store.list("captures/")):
        simulate_dataset(spec, store)
    df = held_out_manifest(store, seed, case.calibration_sent)
    write_manifest(df, manifest_path(store))
    ceiling_rigs = capture_rigs(spec)  # the ceiling and the physics fit of the rig that took the captures
    m = evaluate(
        checkpoint,
        store,
        df,
        out / "report",
        split="test",
        with_ceiling=with_ceiling,
        ceiling_kw=ceiling_kw,
        gradcam=0,
        baselines=case.calibration_sent,
        ceiling_rigs=ceiling_rigs,
    )
    return {
        "case": case.name,
        "description": case.description,
        "n": m["n"],
        "balanced_accuracy": m["balanced_accuracy"],
        "heavy_light": m["heavy_light_balanced_accuracy"],
        "ceiling": m.get("ceiling_accuracy"),
        "ceiling_heavy_light": m.get("ceiling_heavy_light"),
        "ceiling_lower_se": m.get("ceiling_lower_se"),
        "ceiling_upper": m.get("ceiling_upper"),
        "ceiling_upper_se": m.get("ceiling_upper_se"),
        "ceiling_position": m.get("ceiling_position"),
        "gap": m.get("ceiling_gap"),
        "set_coverage": m["set_coverage"],
        "set_size": m["set_size_mean"],
        "physics_fit": (m.get("baselines") or {}).get("physics_fit", {}).get("balanced_accuracy"),
        "flags": {k: v for k, v in m["flag_rates"].items() if v > 0},
    }


def run_suite(
    checkpoint: str | Path,
    out_dir: str | Path,
    cases: Sequence[str] | None = None,
    plates_per_class: int = 60,
    seed: int = 1000,
    with_ceiling: bool = True,
    ceiling_kw: dict | None = None,
    log=None,
) -> list[dict]:
    """Every case (or the named ones); writes ``robustness.json`` and ``robustness.md`` into ``out_dir``."""
    out = Path(out_dir)
    rows = []
    for case in (case_named(c) for c in cases) if cases else CASES:
        rows.append(run_case(checkpoint, case, out / case.name, plates_per_class, seed, with_ceiling, ceiling_kw))
        if log:
            r = rows[-1]
            log(
                f"{case.name}: balanced accuracy {r['balanced_accuracy']:.3f}"
                + (
                    f" (bracket {r['ceiling']:.3f}-{r['ceiling_upper']:.3f}: {r['ceiling_position']})"
                    if r["ceiling"] is not None
                    else ""
                )
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(jsonable(rows), indent=1))
    (out / "robustness.md").write_text(markdown(rows, checkpoint))
    return rows


def markdown(rows: list[dict], checkpoint) -> str:
    def f(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"# Robustness of `{checkpoint}`",
        "",
        "Each case: a balanced test set simulated from the model's own nominal rig with one thing changed, "
        "and the bracket of what physics allows for that case: a classifier a line can run (lower edge) and an "
        "observer told each plate's candidate compositions (upper edge), ± Monte-Carlo standard error.",
        "",
        "| case | n | balanced accuracy | bracket (lower-upper) | against the bracket | heavy vs light (lower "
        "edge) | physics fit | set coverage / size | flags raised |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flags = ", ".join(f"{k} {v:.0%}" for k, v in r["flags"].items()) or "-"
        br = (
            "n/a"
            if r["ceiling"] is None
            else (
                f"{f(r['ceiling'])} ± {f(r.get('ceiling_lower_se'))} - {f(r.get('ceiling_upper'))} ± "
                f"{f(r.get('ceiling_upper_se'))}"
            )
        )
        lines.append(
            f"| {r['description']} | {r['n']} | {f(r['balanced_accuracy'])} | {br} | "
            f"{r.get('ceiling_position') or '-'} | {f(r['heavy_light'])} ({f(r['ceiling_heavy_light'])}) | "
            f"{f(r['physics_fit'])} | {f(r['set_coverage'])} / {r['set_size']:.2f} | {flags} |"
        )
    return "\n".join(lines) + "\n"
