"""The rig fit's plot (`alloynet rig fit`): measured and fitted wedge profiles of each reference group and
their residuals in single-capture sd."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alloynet.physics.rig_fit import Reference, RigFit, held_out_profiles, model_sd


def plot_fit(cal: RigFit, refs: Sequence[Reference], path: str | Path, holdout: Sequence[Reference] = ()) -> None:
    """Measured and fitted profiles of each reference group (top) and residuals in single-capture sd (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[Reference]] = {}
    for r in list(refs) + list(holdout):
        groups.setdefault((r.kind, r.wedge_mm, r.nominal_thickness_mm, r in holdout), []).append(r)
    keys = sorted(groups, key=lambda k: (k[1], k[0] != "wedge", k[2]))
    fig, axes = plt.subplots(2, len(keys), figsize=(3.2 * len(keys), 5.5), squeeze=False, sharex=True)
    held = held_out_profiles(cal, holdout)
    for col, key in enumerate(keys):
        top, bottom = axes[0, col], axes[1, col]
        for r in groups[key]:
            model = cal.predictions.get(r.name)
            if model is None:
                model = held[list(holdout).index(r)]
            sd = cal.sigma[r.name] if r.name in cal.sigma else model_sd(cal.rig, r, cal.bins)
            x = np.arange(len(r.mean))
            top.plot(x, r.mean, ".", ms=3, color="k")
            top.plot(x, model, "-", lw=1, color="C1")
            bottom.plot(x, (model - r.mean) / sd, "-", lw=0.8)
        kind, wedge, t, is_held = key
        top.set_title(
            ("wedge alone" if kind == "wedge" else f"plate {t:g} mm")
            + f", {wedge:g} mm wedge"
            + (" (held out)" if is_held else ""),
            fontsize=8,
        )
        bottom.axhline(0, color="grey", lw=0.5)
        bottom.set_xlabel("profile bin")
    axes[0, 0].set_ylabel("-ln T (dots: measured, line: fitted)")
    axes[1, 0].set_ylabel("(model - measured) / single-capture sd")
    fig.suptitle(f"rig fit: misfit rms {cal.misfit_rms:.2f} sd, chi2/dof {cal.chi2 / cal.dof:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
