"""A cached study set is reused only when the spec that made it is the same, whatever its stamp calls a field."""

from __future__ import annotations

import json

from alloynet.data.manifest import manifest_path
from alloynet.data.simulate import DatasetSpec
from alloynet.study.datasets import _is_current


def _stamped(root, text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    manifest_path(root).parent.mkdir(parents=True, exist_ok=True)
    manifest_path(root).write_text("capture_id\n")
    (root / "spec.json").write_text(text)


def test_a_set_stamped_with_the_old_key_profile_is_still_current(tmp_path):
    spec = DatasetSpec(n_max=5, imbalance="balanced", seed=3)
    _stamped(tmp_path / "new", spec.model_dump_json())
    assert _is_current(spec, tmp_path / "new")

    old = {("profile" if k == "imbalance" else k): v for k, v in json.loads(spec.model_dump_json()).items()}
    _stamped(tmp_path / "old", json.dumps(old))
    assert _is_current(spec, tmp_path / "old")
    assert not _is_current(spec.model_copy(update={"imbalance": "step"}), tmp_path / "old")
    assert not _is_current(spec.model_copy(update={"seed": 4}), tmp_path / "old")

    _stamped(tmp_path / "torn", '{"profile": ')  # a half-written stamp: simulated again, never an error
    assert not _is_current(spec, tmp_path / "torn")
    assert not _is_current(spec, tmp_path / "absent")
