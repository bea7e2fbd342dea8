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

from alloynet import steps
from alloynet.registry import ModelRegistry, open_registry
from alloynet.steps import Candidate

TINY = Candidate(name="tiny", overrides={"epochs": 2, "data.batch_size": 16, "data.norm_images": 8})
FAST_EVAL = {"with_ceiling": False, "gradcam": 0, "baselines": False}


def night_kwargs(root: Path, rig: Path, **over):
    kw = dict(
        source=str(rig),
        data_dir=str(root / "data"),
        registry=str(root / "registry"),
        work_dir=str(root / "runs"),
        candidates=[TINY],
        min_new_labelled=1,
        formats=["torchserve", "triton", "triton-gpu"],
        device="cpu",
        accepted_sizes=[(32, 32)],
        evaluate_options=FAST_EVAL,
    )
    kw.update(over)
    return kw


def artifacts_by_key(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # newest first
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )


@pytest.fixture(scope="module")
def report_site(tmp_path_factory):
    """A report store (a directory) and an HTTP server on a free port that serves it, as a browser would read it."""
    import functools
    import http.server
    import threading

    root = tmp_path_factory.mktemp("reports")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def first_night(prefect_harness, tiny_rig, report_site, tmp_path_factory):
    """The first night on an empty model store, everything real (evaluation with the physics ceiling and plots),
    its reports published to a report store served over HTTP."""
    from flows.nightly import nightly

    root = tmp_path_factory.mktemp("night1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALLOYNET_REPORTS_URL", report_site[1])
        state = nightly(
            **night_kwargs(
                root, tiny_rig, reports=str(report_site[0]), evaluate_options={"with_ceiling": True, "gradcam": 2}
            ),
            return_state=True,
        )
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
        m = {
            "balanced_accuracy": b,
            "accuracy": b,
            "macro_f1": b,
            "thickness_mae_mm": 0.3,
            "per_class": {
                a: {"recall": 0.8 if champion else tail_recall, "precision": b, "f1": b, "specificity": 0.9}
                for a in ("Al1050", "Al2024", "Al5083", "Al6082", "Al7075")
            },
        }
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(m))
        scripted_predictions(b).to_csv(Path(out_dir) / "predictions.csv", index=False)
        return m

    monkeypatch.setattr(steps, "evaluate_checkpoint", fake)


def scripted_predictions(balanced_accuracy: float, per_class: int = 4):
    """Per-capture predictions on a balanced test set with the given balanced accuracy: the first k captures,
    taken one class at a time, are right. A better model is right on a superset of a worse one's captures."""
    import pandas as pd

    classes = ["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"]
    n = per_class * len(classes)
    k = round(balanced_accuracy * n)
    order = sorted(range(n), key=lambda i: (i % per_class, i // per_class))  # round robin over the classes
    right = set(order[:k])
    true = [classes[i // per_class] for i in range(n)]
    pred = [t if i in right else classes[(classes.index(t) + 1) % len(classes)] for i, t in enumerate(true)]
    return pd.DataFrame({"capture_id": [f"t{i:03d}" for i in range(n)], "true": true, "predicted": pred})


def test_first_night_end_to_end(first_night):
    root, state = first_night
    assert state.is_completed(), state.message
    out = state.result()
    reg = open_registry(root / "registry")
    assert out["promoted"] == "v0001" and reg.pointer().version == "v0001"
    mv = reg.verify("v0001")  # every artifact matches its recorded sha256
    names = set(mv.artifacts)
    assert {
        steps.CHECKPOINT_ARTIFACT,
        steps.MANIFEST_ARTIFACT,
        steps.EVALUATION_ARTIFACT,
        "export/model.onnx",
        "export/model.pt",
        "export/export.json",
        "torchserve/alloynet.mar",
        "triton/alloynet/config.pbtxt",
        "triton/alloynet/1/model.onnx",
        "triton-gpu/alloynet/config.pbtxt",
        "triton-gpu/alloynet/1/model.onnx",
    } <= names
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


def _all_artifacts():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_artifacts()


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, url
        return r.read()


def run_logs(flow_run_id, contains: str, timeout: float = 20.0) -> list[str]:
    """The flow run's log messages (polled: the API log handler sends them in batches)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            msgs = [
                log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            ]
        if any(contains in m for m in msgs) or time.monotonic() > deadline:
            return msgs
        time.sleep(0.5)


def test_first_night_summary_on_the_run_itself(first_night):
    """One card and one log line on the nightly run's own page; images that load over HTTP."""
    import re

    from alloynet.evaluate.bootstrap import balanced_accuracy, read_predictions

    root, state = first_night
    out = state.result()
    run_id = state.state_details.flow_run_id
    summary = artifacts_by_key("nightly-summary")[0]
    assert summary.type == "markdown" and summary.flow_run_id == run_id  # on the nightly run, not a subflow
    md = summary.data
    m = out["evaluation"]["tiny"]
    assert "promoted tiny as v0001" in md and "**Champion**: none -> v0001" in md
    se = max(m["ceiling_lower_se"], m["ceiling_upper_se"])
    assert (
        f"| tiny | {m['balanced_accuracy']:.3f} | {m['ceiling_lower']:.3f}-{m['ceiling_upper']:.3f} ± {se:.3f} | "
        f"{m['ceiling_position']} |"
    ) in md
    assert "| physics (lower edge) |" in md and "95% bootstrap interval" in md and "test captures per class" in md
    assert "ingest details" in md and "/artifacts/artifact/" in md and "/runs/flow-run/" in md
    # the champion's confusion matrix: an http URL that serves the very PNG the evaluation wrote
    confusion = artifacts_by_key("champion-confusion")[0]
    assert confusion.type == "image" and confusion.flow_run_id == run_id
    png = _get(confusion.data)
    assert (
        png[:8] == b"\x89PNG\r\n\x1a\n"
        and png == (Path(out["report_dirs"]["tiny"]) / "plots" / "confusion.png").read_bytes()
    )
    assert f"![confusion matrix of the champion]({confusion.data})" in md
    # every image of the markdown report loads; none points at the worker's disk
    report = artifacts_by_key("report-tiny")[0].data
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert images and all(u.startswith("http://127.0.0.1:") for u in images) and "file://" not in report
    assert all(_get(u)[:4] == b"\x89PNG" for u in images)
    assert images.index(confusion.data) < min(images.index(u) for u in images if "/gradcam/" in u)
    # stable keys: no capture names, no version numbers; the plots that matter, in that order of importance
    keys = {a.key for a in _all_artifacts() if a.key}
    assert {
        "tiny-confusion",
        "tiny-pr",
        "tiny-roc",
        "tiny-learning-curves",
        "tiny-thickness-scatter",
        "champion-report",
        "nightly-recall-per-class",
    } <= keys
    assert not [k for k in keys if re.search(r"v\d{4}|gradcam|plot-", k)], keys
    # the interval is computed from both... here only the challenger: per-capture predictions agree with metrics
    pred = read_predictions(out["report_dirs"]["tiny"])
    assert balanced_accuracy(pred.true, pred.predicted) == pytest.approx(m["balanced_accuracy"], abs=1e-9)
    assert len(pred) == m["n"]
    u = out["decision"]["uncertainty"]
    assert u["challenger_low"] <= m["balanced_accuracy"] <= u["challenger_high"] and u["margin"] is None
    # one summary log line on the run, and the trainer's epoch lines in the retrain subflow's logs
    line = next(x for x in run_logs(run_id, "nightly summary:") if x.startswith("nightly summary:"))
    assert "promoted tiny as v0001" in line and "champion none -> v0001" in line
    assert re.search(
        r"tiny balanced accuracy \d\.\d{3} \(physics bracket \d\.\d{3}-\d\.\d{3} ± \d\.\d{3}: "
        r"(within the bracket|\d\.\d{3} (below its lower|above its upper) edge)",
        line,
    ), line
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        retrain_run = next(
            r
            for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
            )
            if r.name and client.read_flow(r.flow_id).name == "retrain"
        )
    epochs = [x for x in run_logs(retrain_run.id, "epoch 2/2") if x.startswith("epoch ")]
    # the candidate's two epochs, each once (the cross-fitting folds of a tiny store log their own "epoch 1/1")
    assert [e.split()[1] for e in epochs if e.split()[1].endswith("/2")] == ["1/2", "2/2"], epochs


def test_second_night_with_nothing_new_changes_nothing(prefect_harness, tiny_rig, after_first_night):
    from flows.nightly import nightly

    root = after_first_night
    manifest = root / "data" / "manifest.csv"
    before = (
        manifest.read_bytes(),
        manifest.stat().st_mtime_ns,
        sorted(p.name for p in (root / "data" / "captures").iterdir()),
    )
    out = nightly(**night_kwargs(root, tiny_rig))
    assert out["ingest"] == {"new": [], "duplicates": [], "vanished": []} and out["promoted"] is None
    assert "only 0 new labelled captures" in out["retrain"]
    assert (
        manifest.read_bytes(),
        manifest.stat().st_mtime_ns,
        sorted(p.name for p in (root / "data" / "captures").iterdir()),
    ) == before
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


def test_better_challenger_is_promoted_and_rollback_restores(prefect_harness, tiny_rig, after_first_night, monkeypatch):
    from typer.testing import CliRunner

    from alloynet.cli import app
    from flows.nightly import nightly

    root = after_first_night
    scripted_evaluation(monkeypatch, champion_bacc=0.60, candidate_bacc=0.70)
    out = nightly(**night_kwargs(root, tiny_rig, force_retrain=True))
    reg = open_registry(root / "registry")
    assert out["promoted"] == "v0002"
    # how sure: 14 vs 12 of 20 right, the challenger right wherever the champion is -> +0.10, never worse
    u = out["decision"]["uncertainty"]
    assert u["margin"] == pytest.approx(0.10) and u["margin_low"] >= 0 and u["margin_high"] > 0.10
    assert u["n_per_class"] == {c: 4 for c in ("Al1050", "Al2017", "Al5083", "Al6082", "Al7075")}
    assert "Margin +0.100, 95% bootstrap interval +0.0" in artifacts_by_key("nightly-decision")[0].data
    assert "**Champion**: v0001 -> v0002" in artifacts_by_key("nightly-summary")[0].data
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
    assert (
        not (root / "data" / "state" / "last_training.json").exists()
        or json.loads((root / "data" / "state" / "last_training.json").read_text())["run"] != "broken"
    )


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
    with pytest.raises(KeyboardInterrupt):
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


def test_an_empty_source_is_a_warning_not_a_silent_green(prefect_harness, tmp_path):
    """A wrong source prefix: the night completes (nothing to do is not an error) but says so, in the summary
    and the ingest card, instead of a bare '0 new'."""
    from flows.nightly import nightly

    empty = tmp_path / "wrong-prefix"
    empty.mkdir()
    state = nightly(**night_kwargs(tmp_path, empty), return_state=True)
    assert state.is_completed(), state.message
    summary = artifacts_by_key("nightly-summary")[0]
    assert summary.flow_run_id == state.state_details.flow_run_id
    assert "nothing ingested, nothing trained; champion (none) kept" in summary.data
    assert f"the source `{empty}` holds no captures" in summary.data
    assert "holds no captures" in artifacts_by_key("ingest-summary")[0].data
    assert "No retrain tonight" in artifacts_by_key("nightly-decision")[0].data


@pytest.mark.s3
def test_a_missing_bucket_fails_in_one_line_and_says_what_to_check(
    prefect_harness, s3_server, tiny_rig, after_first_night
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    from flows.nightly import nightly

    root = after_first_night
    source = f"s3://no-such-bucket/rig?endpoint={s3_server.endpoint}"
    state = nightly(**night_kwargs(root, tiny_rig, source=source), return_state=True)
    assert state.is_failed()
    assert "bucket 'no-such-bucket' does not exist" in state.message and "botocore" not in state.message
    decision = artifacts_by_key("nightly-decision")[0]
    assert decision.flow_run_id == state.state_details.flow_run_id
    assert decision.data.startswith("## Failed at ingest; champion v0001 unchanged")
    assert "**What to check**: the `source` parameter" in decision.data
    assert "FAILED at ingest" in artifacts_by_key("nightly-summary")[0].data
    with get_client(sync_client=True) as client:  # a missing bucket is not retried: it stays missing
        ingest_run = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )[0]
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [ingest_run.id]}),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="ingest-captures")),
        )
    assert len(tasks) == 1 and tasks[0].run_count == 1 and tasks[0].state.is_failed()
    assert open_registry(root / "registry").pointer().version == "v0001"


def test_retrain_with_a_rig_profile_pretrains_every_candidate_then_fine_tunes(prefect_harness, after_first_night):
    """The nightly option of sim-to-real: the flow's ``pretrain`` (a rig profile) reaches every candidate."""
    import yaml

    from flows.retrain import retrain
    from tests.unit.train.test_train import _profile

    root = after_first_night
    prof = _profile(root / "rig.yaml")
    tiny = Candidate(name="tiny", overrides={**TINY.overrides, "pretrain.epochs": 1, "pretrain.synthetic.captures": 20})
    out = retrain(
        str(root / "data"), str(root / "runs" / "r"), [tiny], force=True, device="cpu", record=False, pretrain=str(prof)
    )
    assert [t["name"] for t in out["trained"]] == ["tiny"]
    cand = root / "runs" / "r" / "candidates" / "tiny"
    cfg = yaml.safe_load((cand / "config.yaml").read_text())
    assert cfg["model"]["init_from"] == str((cand / "pretrain" / "best.pt").resolve())
    assert cfg["pretrain"]["synthetic"]["rig_profile"] == str(prof.resolve())
    assert yaml.safe_load((cand / "pretrain" / "config.yaml").read_text())["data"]["synthetic_only"] is True
    with pytest.raises(ValueError, match="rig profile .*missing.yaml not found"):
        TINY.pretrained_on(str(root / "missing.yaml"))
