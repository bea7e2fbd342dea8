"""What a data set says about the rig and the plates: the nominal rig settings in its sidecars and its
thickness prior. The physics bracket, the physics fit and the simulated training data all start from these."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alloynet.captures.format import parse_sidecar
from alloynet.captures.layout import sidecar_key
from alloynet.captures.stores import ObjectStore
from alloynet.data.manifest import MAX_NOMINAL_VALUES
from alloynet.physics.observer import ThicknessPrior
from alloynet.physics.simulator import RigConfig


def data_prior(rows: pd.DataFrame) -> ThicknessPrior:
    """The thickness prior of these captures: their nominal values when there are a few, else their range."""
    t = rows.nominal_thickness_mm.to_numpy(float)
    values = sorted(set(np.round(t, 6)))
    if len(values) <= MAX_NOMINAL_VALUES:
        return ThicknessPrior(values_mm=tuple(values))
    return ThicknessPrior(range_mm=(float(t.min()), float(t.max())))


def rig_settings(store: ObjectStore, rows: pd.DataFrame) -> dict[float, tuple[RigConfig, int]]:
    """The nominal rig (from the sidecars) for each wedge size among these captures, and how many captures."""
    rigs = {}
    for wedge, group in rows.groupby("wedge_mm", sort=True):
        sc = parse_sidecar(store.get(sidecar_key(group.capture_id.iloc[0])))
        rigs[float(wedge)] = (
            RigConfig(
                **sc.rig.nominal_settings(),
                height=int(group.height.iloc[0]),
                width=int(group.width.iloc[0]),
                **({"dose": sc.rig.dose} if sc.rig.dose else {}),
            ),
            len(group),
        )
    return rigs


def nominal_rig(rigs: dict[float, tuple[RigConfig, int]]) -> RigConfig:
    """A data set's nominal rig from ``rig_settings``: the settings of its most common wedge."""
    return max(rigs.values(), key=lambda r: r[1])[0]
