"""The Prefect flows on a tiny data set, in-process against the session's test harness.

The first night runs everything for real (ingest, train, evaluate, export, package, publish, promote).
Later nights reuse its model store and data; where a test needs a challenger that is known to be
better or worse, the evaluation step is scripted (the decision logic and the transaction are real).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alloynet.registry import ModelRegistry, open_registry
from alloynet import steps
from alloynet.steps import Candidate

TINY = Candidate(name="tiny", overrides={"epochs": 2, "data.batch_size": 16, "data.norm_images": 8})
FAST_EVAL = {"with_ceiling": False, "gradcam": 0, "baselines": False}


def night_kwargs(root: Path, rig: Path, **over):
    kw = dict(source=str(rig), data_dir=str(root / "data"), registry=str(root / "registry"),
              work_dir=str(root / "runs"), candidates=[TINY], min_new_labelled=1, formats=["torchserve", "triton"],
              device="cpu", accepted_sizes=[(32, 32)], evaluate_options=FAST_EVAL)
    kw.update(over)
    return kw


def artifacts_by_key(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # newest first
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC)


@pytest.fixture(scope="module")
def first_night(prefect_harness, tiny_rig, tmp_path_factory):
    """The first night on an empty model store, everything real (evaluation with the physics ceiling and plots)."""
    from flows.nightly import nightly

    root = tmp_path_factory.mktemp("night1")
    state = nightly(**night_kwargs(root, tiny_rig), return_state=True)
    return root, state


@pytest.fixture
def after_first_night(first_night, tmp_path):
    """A private copy of the first night's data and model store (champion v0001)."""
    root, state = first_night
    assert state.is_completed(), state.message
    for d in ("data", "registry"):
        shutil.copytree(root / d, tmp_path / d)
    return tmp_path


def scripted_evaluation(monkeypatch, champion_bacc: float, candidate_bacc: float, tail_recall: float = 0.8):
    """Replace the evaluation step: the champion (re-evaluated under <run>/champion/) and the candidate
    get the given balanced accuracy; everything else in the flow stays real."""
    def fake(checkpoint, dataset, out_dir, **_):
        champion = "/champion/" in str(out_dir)
        b = champion_bacc if champion else candidate_bacc
        m = {"balanced_accuracy": b, "accuracy": b, "macro_f1": b, "thickness_mae_mm": 0.3,
             "per_class": {a: {"recall": 0.8 if champion else tail_recall, "precision": b, "f1": b,
                               "specificity": 0.9} for a in ("Al1050", "Al2024", "Al5083", "Al6082", "Al7075")}}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(m))
        return m

    monkeypatch.setattr(steps, "evaluate_checkpoint", fake)


def test_first_night_end_to_end(first_night):
    root, state = first_night
    assert state.is_completed(), state.message
    out = state.result()
    reg = open_registry(root / "registry")
    assert out["promoted"] == "v0001" and reg.pointer().version == "v0001"
    mv = reg.verify("v0001")  # every artifact matches its recorded sha256
    names = set(mv.artifacts)
    assert {steps.CHECKPOINT_ARTIFACT, steps.MANIFEST_ARTIFACT, steps.EVALUATION_ARTIFACT,
            "export/model.onnx", "export/model.pt", "export/export.json", "torchserve/alloynet.mar",
            "triton/alloynet_onnx/config.pbtxt", "triton/alloynet_onnx/1/model.onnx"} <= names
    assert mv.metrics["balanced_accuracy"] == out["evaluation"]["tiny"]["balanced_accuracy"]
    from alloynet.data.manifest import manifest_hash, read_manifest
    assert mv.manifest_hash == manifest_hash(read_manifest(root / "data" / "manifest.csv"))
    assert "no champion yet" in " ".join(out["decision"]["reasons"])
    report = Path(out["report_dirs"]["tiny"])
    assert (report / "metrics.json").exists() and any(report.rglob("*.png"))
    # the UI gets the evaluation table, the decision and the plots as keyed artifacts
    table = artifacts_by_key("nightly-evaluation")[0]
    assert table.type == "table" and "tiny" in str(table.data)
    decision = artifacts_by_key("nightly-decision")[0]
    assert "Promoted" in decision.data and "no champion yet" in decision.data
    assert artifacts_by_key("ingest-summary") and artifacts_by_key("report-tiny")
    assert any(a.type == "image" for a in _all_artifacts() if a.key and a.key.startswith("plot-tiny"))


def _all_artifacts():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_artifacts()


def test_second_night_with_nothing_new_changes_nothing(prefect_harness, tiny_rig, after_first_night):
    from flows.nightly import nightly

    root = after_first_night
    manifest = root / "data" / "manifest.csv"
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns, sorted(p.name for p in (root / "data" / "captures").iterdir()))
    out = nightly(**night_kwargs(root, tiny_rig))
    assert out["ingest"] == {"new": [], "duplicates": [], "vanished": []} and out["promoted"] is None
    assert "only 0 new labelled captures" in out["retrain"]
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns,
            sorted(p.name for p in (root / "data" / "captures").iterdir())) == before
    assert [v.version for v in open_registry(root / "registry").versions()] == ["v0001"]


def test_worse_challenger_is_not_promoted(prefect_harness, tiny_rig, after_first_night, monkeypatch):
    from flows.nightly import nightly

    root = after_first_night
    scripted_evaluation(monkeypatch, champion_bacc=0.60, candidate_bacc=0.605)  # wins, but not by the margin
    out = nightly(**night_kwargs(root, tiny_rig, force_retrain=True))
    reg = open_registry(root / "registry")
    assert out["promoted"] is None and out["champion_before"] == "v0001"
    assert "does not win by the margin" in " ".join(out["decision"]["reasons"])
    assert reg.pointer().version == "v0001" and [v.version for v in reg.versions()] == ["v0001"]
    assert "Not promoted" in artifacts_by_key("nightly-decision")[0].data


def test_tail_regression_blocks_promotion(prefect_harness, tiny_rig, after_first_night, monkeypatch):
    from flows.nightly import nightly

    root = after_first_night
    scripted_evaluation(monkeypatch, champion_bacc=0.60, candidate_bacc=0.80, tail_recall=0.5)
    out = nightly(**night_kwargs(root, tiny_rig, force_retrain=True))
    assert out["promoted"] is None and "tail class" in " ".join(out["decision"]["reasons"])
    assert open_registry(root / "registry").pointer().version == "v0001"


def test_better_challenger_is_promoted_and_rollback_restores(prefect_harness, tiny_rig, after_first_night,
                                                             monkeypatch):
    from typer.testing import CliRunner

    from alloynet.cli import app
    from flows.nightly import nightly

    root = after_first_night
    scripted_evaluation(monkeypatch, champion_bacc=0.60, candidate_bacc=0.70)
    out = nightly(**night_kwargs(root, tiny_rig, force_retrain=True))
    reg = open_registry(root / "registry")
    assert out["promoted"] == "v0002"
    p = reg.pointer()
    assert p.version == "v0002" and p.previous == ["v0001"] and reg.get("v0002").parent == "v0001"
    reg.verify("v0002")
    res = CliRunner().invoke(app, ["registry", "rollback", "-r", str(root / "registry"), "--reason", "field report"])
    assert res.exit_code == 0, res.output
    assert reg.pointer().version == "v0001"
    assert [v.version for v in reg.versions()] == ["v0001", "v0002"]  # nothing deleted by a rollback


def test_failed_training_leaves_champion_untouched(prefect_harness, tiny_rig, after_first_night):
    from flows.nightly import nightly

    root = after_first_night
    broken = Candidate(name="broken", overrides={"model.name": "no-such-architecture"})
    state = nightly(**night_kwargs(root, tiny_rig, candidates=[broken], force_retrain=True), return_state=True)
    assert state.is_failed() and "every candidate failed to train" in state.message
    reg = open_registry(root / "registry")
    assert reg.pointer().version == "v0001" and reg.pointer().generation == 1
    assert [v.version for v in reg.versions()] == ["v0001"]
    # the failed night did not count its captures as trained on: tomorrow retrains
    assert not (root / "data" / "state" / "last_training.json").exists() or \
        json.loads((root / "data" / "state" / "last_training.json").read_text())["run"] != "broken"


def test_failure_after_packaging_keeps_the_old_champion(prefect_harness, tiny_rig, after_first_night, monkeypatch):
    from flows.nightly import nightly

    root = after_first_night
    scripted_evaluation(monkeypatch, champion_bacc=0.60, candidate_bacc=0.70)
    real_promote = ModelRegistry.promote

    def pointer_write_fails(self, version, reason, expected_generation=None):
        raise OSError("model store unreachable while moving the champion pointer")

    monkeypatch.setattr(ModelRegistry, "promote", pointer_write_fails)
    state = nightly(**night_kwargs(root, tiny_rig, force_retrain=True), return_state=True)
    monkeypatch.setattr(ModelRegistry, "promote", real_promote)
    assert state.is_failed() and "model store unreachable" in state.message
    reg = open_registry(root / "registry")
    assert reg.pointer().version == "v0001" and reg.pointer().generation == 1
    assert [v.version for v in reg.versions()] == ["v0001"]  # the published v0002 was rolled back
    assert reg.events()[-1]["action"] == "discard" and reg.events()[-1]["version"] == "v0002"
    reg.verify("v0001")
    release = next((root / "runs").iterdir()) / "release" / "tiny"
    assert not (release / "export").exists() and not (release / "packages").exists()


def test_failure_after_the_pointer_moved_is_undone(prefect_harness, tiny_rig, after_first_night, monkeypatch):
    """The read-back after the move fails: the move is rolled back and the old champion serves again."""
    from flows.nightly import nightly

    root = after_first_night
    scripted_evaluation(monkeypatch, champion_bacc=0.60, candidate_bacc=0.70)
    real_verify = ModelRegistry.verify

    def unreadable_once_champion(self, version):
        if self.pointer().version == version == "v0002":
            raise OSError("read-after-write check failed")
        return real_verify(self, version)

    monkeypatch.setattr(ModelRegistry, "verify", unreadable_once_champion)
    state = nightly(**night_kwargs(root, tiny_rig, force_retrain=True), return_state=True)
    monkeypatch.setattr(ModelRegistry, "verify", real_verify)
    assert state.is_failed() and "read-after-write" in state.message
    reg = open_registry(root / "registry")
    assert reg.pointer().version == "v0001" and [v.version for v in reg.versions()] == ["v0001"]
    assert [e["action"] for e in reg.events()][-3:] == ["promote", "rollback", "discard"]


def test_failure_inside_the_pointer_move_is_undone(prefect_harness, tiny_rig, after_first_night, monkeypatch):
    """The pointer is written but the audit event is not: the move task undoes its own write."""
    from flows.nightly import nightly

    root = after_first_night
    scripted_evaluation(monkeypatch, champion_bacc=0.60, candidate_bacc=0.70)
    real_event = ModelRegistry._event

    def event_fails_on_promote(self, action, version, reason, **extra):
        if action == "promote":
            raise OSError("audit log unwritable")
        return real_event(self, action, version, reason, **extra)

    monkeypatch.setattr(ModelRegistry, "_event", event_fails_on_promote)
    state = nightly(**night_kwargs(root, tiny_rig, force_retrain=True), return_state=True)
    monkeypatch.setattr(ModelRegistry, "_event", real_event)
    assert state.is_failed() and "audit log unwritable" in state.message
    reg = open_registry(root / "registry")
    assert reg.pointer().version == "v0001" and [v.version for v in reg.versions()] == ["v0001"]


def test_ingest_flow_is_idempotent_and_resumes_after_a_crash(prefect_harness, tiny_rig, tmp_path, monkeypatch):
    import alloynet.captures.ingest as ingest_mod
    from flows.ingest import ingest

    data = tmp_path / "data"
    real = ingest_mod._ingest_one
    calls = {"n": 0}

    def crash_after_five(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("power cut")  # not retried by Prefect, unlike an ordinary exception
        return real(*a, **kw)

    monkeypatch.setattr(ingest_mod, "_ingest_one", crash_after_five)
    with pytest.raises(BaseException):
        ingest(str(tiny_rig), str(data), accepted_sizes=[(32, 32)])
    monkeypatch.setattr(ingest_mod, "_ingest_one", real)
    got = sorted(p.name for p in (data / "captures").glob("*.json"))
    assert len(got) == 5
    r2 = ingest(str(tiny_rig), str(data), accepted_sizes=[(32, 32)])
    n_total = len(list((tiny_rig / "captures").glob("*.json")))
    assert len(r2["new"]) == n_total - 5 and r2["duplicates"] == [] and r2["quarantined"] == {}
    manifest = (data / "manifest.csv").read_bytes()
    r3 = ingest(str(tiny_rig), str(data), accepted_sizes=[(32, 32)])
    assert (r3["new"], r3["duplicates"], r3["manifest_changed"]) == ([], [], False)
    assert (data / "manifest.csv").read_bytes() == manifest


@pytest.mark.s3
def test_ingest_flow_from_s3_quarantines_and_reports(prefect_harness, s3_server, s3_bucket, tiny_rig, tmp_path):
    from alloynet.captures.stores import S3Store
    from flows.ingest import ingest

    s3 = S3Store(s3_bucket, "rig", endpoint_url=s3_server.endpoint)
    files = sorted((tiny_rig / "captures").iterdir())
    for f in files:
        s3.put(f"captures/{f.name}", f.read_bytes())
    bad = files[0].stem
    s3.put(f"captures/{bad}.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, overwrite=True)
    uri = f"s3://{s3_bucket}/rig?endpoint={s3_server.endpoint}"
    r = ingest(uri, str(tmp_path / "data"), accepted_sizes=[(32, 32)])
    assert list(r["quarantined"]) == [f"captures/{bad}.json"] and len(r["new"]) == len(files) // 2 - 1
    rows = artifacts_by_key("ingest-quarantine")[0].data
    assert bad in str(rows) and "PNG" in str(rows)
    r2 = ingest(uri, str(tmp_path / "data"), accepted_sizes=[(32, 32)])
    assert (r2["new"], r2["quarantined"]) == ([], {})
