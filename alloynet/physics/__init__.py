"""Physics of the rig: attenuation data, tube spectrum, alloys, the simulator and the ideal observer.

Names are resolved lazily (PEP 562): ``from alloynet.physics.alloys import ALLOYS`` must not load scipy,
xraydb and SpekPy, because the capture format (and so the serving client) needs only the alloy table.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ALLOYS": "alloys",
    "ALLOY_NAMES": "alloys",
    "Alloy": "alloys",
    "AlloyTable": "alloys",
    "Plate": "alloys",
    "STANDARD_ALLOYS": "alloys",
    "alloys_from_config": "alloys",
    "get_alloy": "alloys",
    "sample_plate": "alloys",
    "with_alloys": "alloys",
    "RigConfig": "simulator",
    "RigSimulator": "simulator",
    "SimulatedCapture": "simulator",
    "Spectrum": "spectrum",
    "monochromatic": "spectrum",
    "tube_spectrum": "spectrum",
    "neg_log_transmission": "transmission",
    "neg_log_transmission_of": "transmission",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
