"""Golden outputs in tests/expect/, compared with a tolerance.

Regenerate deliberately, after a change you have understood, with ``ALLOYNET_EXPECT_ACCEPT=1 pytest ...``
(as torchvision's EXPECTTEST_ACCEPT=1); never to make a failing test pass.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

EXPECT = Path(__file__).resolve().parents[1] / "expect"


def _compare(got, want, rtol: float, atol: float, path: str) -> list[str]:
    if isinstance(want, dict):
        if set(got) != set(want):
            return [f"{path}: keys {sorted(got)} != {sorted(want)}"]
        return [e for k in want for e in _compare(got[k], want[k], rtol, atol, f"{path}.{k}")]
    if isinstance(want, list):
        if len(got) != len(want):
            return [f"{path}: length {len(got)} != {len(want)}"]
        return [e for i, (g, w) in enumerate(zip(got, want)) for e in _compare(g, w, rtol, atol, f"{path}[{i}]")]
    if isinstance(want, float) or isinstance(got, float):
        ok = math.isclose(float(got), float(want), rel_tol=rtol, abs_tol=atol)
        return [] if ok else [f"{path}: {got!r} != expected {want!r} (rtol {rtol}, atol {atol})"]
    return [] if got == want else [f"{path}: {got!r} != expected {want!r}"]


def assert_expected(name: str, data, rtol: float = 1e-6, atol: float = 0.0) -> None:
    path = EXPECT / f"{name}.json"
    data = json.loads(json.dumps(data))  # normalise tuples, numpy floats
    if os.environ.get("ALLOYNET_EXPECT_ACCEPT") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    if not path.exists():
        raise AssertionError(f"no golden output {path}; create it deliberately with ALLOYNET_EXPECT_ACCEPT=1")
    errors = _compare(data, json.loads(path.read_text()), rtol, atol, name)
    assert not errors, "golden output differs:\n" + "\n".join(errors[:20])
