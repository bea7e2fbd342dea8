"""The model store (versions, hashes, champion pointer, rollback) and the promotion rule."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from alloynet.captures.stores import LocalStore, S3Store
from alloynet.cli import app
from alloynet.registry import (
    ArtifactIntegrityError,
    ModelRegistry,
    PromotionRule,
    RegistryError,
    decide,
    open_registry,
    tail_classes,
)
from alloynet.registry.promotion import best_candidate


def _release(tmp_path, name, payload=b"weights"):
    d = tmp_path / name
    (d / "checkpoint").mkdir(parents=True)
    (d / "checkpoint" / "model.ckpt").write_bytes(payload)
    (d / "triton" / "alloynet" / "1").mkdir(parents=True)
    (d / "triton" / "alloynet" / "1" / "model.onnx").write_bytes(payload + b"-onnx")
    return d


def _metrics(bacc, tail_recall=0.8, mae=0.2):
    return {
        "balanced_accuracy": bacc,
        "macro_f1": bacc,
        "thickness_mae_mm": mae,
        "per_class": {"Al1050": {"recall": 0.9}, "Al7075": {"recall": tail_recall}},
    }


def test_publish_records_hashes_and_metadata(tmp_path):
    reg = open_registry(tmp_path / "models")
    v1 = reg.publish(
        _release(tmp_path, "a"), metrics=_metrics(0.5), config={"model": {"name": "fnn"}}, manifest_hash="abc"
    )
    assert v1.version == "v0001" and v1.parent is None and v1.manifest_hash == "abc"
    import hashlib

    assert v1.artifacts["checkpoint/model.ckpt"].sha256 == hashlib.sha256(b"weights").hexdigest()
    assert set(v1.artifacts) == {"checkpoint/model.ckpt", "triton/alloynet/1/model.onnx"}
    reg.promote(v1.version, "first")
    v2 = reg.publish(_release(tmp_path, "b", b"w2"), metrics=_metrics(0.6))
    assert v2.version == "v0002" and v2.parent == "v0001"
    assert [v.version for v in reg.versions()] == ["v0001", "v0002"]
    assert reg.get("v0002").metrics["balanced_accuracy"] == 0.6
    # versions are immutable: the store refuses to overwrite a published artifact
    from alloynet.captures.stores import ObjectExists

    with pytest.raises(ObjectExists):
        reg.store.put("alloynet/versions/v0001/files/checkpoint/model.ckpt", b"other")


def test_promote_rollback_and_pointer_history(tmp_path):
    reg = ModelRegistry(LocalStore(tmp_path / "models"))
    vs = [reg.publish(_release(tmp_path, f"r{i}", f"w{i}".encode())).version for i in range(3)]
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback()
    for v in vs:
        reg.promote(v, f"promote {v}")
    p = reg.pointer()
    assert p.version == "v0003" and p.previous == ["v0002", "v0001"] and p.generation == 3
    p = reg.rollback("bad night")
    assert p.version == "v0002" and p.previous == ["v0001"]
    assert reg.champion().version == "v0002"
    p = reg.rollback(to="v0001")
    assert p.version == "v0001" and p.previous == []
    actions = [(e["action"], e["version"]) for e in reg.events()]
    assert actions == [
        ("promote", "v0001"),
        ("promote", "v0002"),
        ("promote", "v0003"),
        ("rollback", "v0002"),
        ("rollback", "v0001"),
    ]
    # every version is still there: rollback moves the pointer, it deletes nothing
    assert [v.version for v in reg.versions()] == vs


def test_tampered_artifact_blocks_promotion_and_rollback(tmp_path):
    reg = open_registry(tmp_path / "models")
    a = reg.publish(_release(tmp_path, "a", b"good-a")).version
    b = reg.publish(_release(tmp_path, "b", b"good-b")).version
    reg.promote(a, "first")
    reg.promote(b, "second")
    reg.artifact_path(a, "checkpoint/model.ckpt").write_bytes(b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="checkpoint/model.ckpt"):
        reg.rollback()
    assert reg.pointer().version == b  # pointer untouched by the refused rollback
    reg.artifact_path(b, "triton/alloynet/1/model.onnx").unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        reg.verify(b)
    with pytest.raises(ArtifactIntegrityError):
        reg.fetch(b, tmp_path / "out")


def test_stale_pointer_write_is_refused(tmp_path):
    reg = open_registry(tmp_path / "models")
    a = reg.publish(_release(tmp_path, "a")).version
    b = reg.publish(_release(tmp_path, "b", b"b")).version
    reg.promote(a, "first")
    gen = reg.pointer().generation
    other = open_registry(tmp_path / "models")  # another writer moves the pointer meanwhile
    other.promote(b, "concurrent")
    with pytest.raises(RegistryError, match="moved meanwhile"):
        reg.promote(a, "stale", expected_generation=gen)
    assert reg.pointer().version == b


def test_failed_publish_leaves_nothing_and_discard_protects_champions(tmp_path, monkeypatch):
    reg = open_registry(tmp_path / "models")
    v1 = reg.publish(_release(tmp_path, "a")).version
    reg.promote(v1, "first")
    before = sorted(i.key for i in reg.store.list())
    calls = {"n": 0}
    real_put = reg.store.put

    def flaky_put(key, data, **kw):
        calls["n"] += 1
        if "files/triton" in key:
            raise OSError("disk full")
        return real_put(key, data, **kw)

    monkeypatch.setattr(reg.store, "put", flaky_put)
    with pytest.raises(OSError, match="disk full"):
        reg.publish(_release(tmp_path, "b", b"b"))
    monkeypatch.undo()
    assert sorted(i.key for i in reg.store.list()) == before
    assert [v.version for v in reg.versions()] == [v1]
    with pytest.raises(RegistryError, match="refusing"):
        reg.discard(v1, "should not happen")
    v2 = reg.publish(_release(tmp_path, "c", b"c")).version
    reg.discard(v2, "lost the comparison")
    assert [v.version for v in reg.versions()] == [v1] and reg.pointer().version == v1
    assert reg.events()[-1]["action"] == "discard"


@pytest.mark.s3
def test_registry_on_s3(s3_server, s3_bucket, tmp_path):
    reg = ModelRegistry(S3Store(s3_bucket, "registry", endpoint_url=s3_server.endpoint))
    a = reg.publish(_release(tmp_path, "a", b"a")).version
    b = reg.publish(_release(tmp_path, "b", b"b")).version
    reg.promote(a, "first")
    reg.promote(b, "second")
    assert reg.rollback("s3 rollback").version == a
    out = reg.fetch(a, tmp_path / "fetched")
    assert (out / "checkpoint" / "model.ckpt").read_bytes() == b"a"
    reg.store.put("alloynet/versions/v0001/files/checkpoint/model.ckpt", b"evil", overwrite=True)
    with pytest.raises(ArtifactIntegrityError):
        reg.verify(a)


def test_killed_publish_is_visible_and_discardable(tmp_path, monkeypatch):
    import os
    import time

    reg = open_registry(tmp_path / "models")
    v1 = reg.publish(_release(tmp_path, "a")).version
    # a publisher killed half-way: claim and one artifact written, no version.json (no cleanup ran)
    reg.store.put("alloynet/versions/v0002/claim.json", b"{}")
    reg.store.put("alloynet/versions/v0002/files/checkpoint/model.ckpt", b"half")
    assert [v.version for v in reg.versions()] == [v1]
    assert list(reg.unfinished()) == ["v0002"]
    with pytest.raises(RegistryError, match="may still be publishing"):
        reg.discard("v0002", "killed")
    assert reg.clean()["discarded"] == []  # idle for less than an hour: could be a live publisher
    old = time.time() - 7200
    for p in (tmp_path / "models" / "alloynet" / "versions" / "v0002").rglob("*"):
        os.utime(p, (old, old))
    tmp = tmp_path / "models" / "alloynet" / ".tmp-pointer"
    tmp.write_bytes(b"x")
    os.utime(tmp, (old, old))
    done = reg.clean()
    assert done == {"temp_files": ["alloynet/.tmp-pointer"], "discarded": ["v0002"]}
    assert reg.unfinished() == {} and reg.events()[-1]["action"] == "discard"
    assert reg.publish(_release(tmp_path, "b", b"b")).version == "v0002"
    n_events = len(reg.events())
    reg.discard("v0009", "already gone")  # idempotent: nothing there, nothing recorded
    assert len(reg.events()) == n_events


def test_failed_fetch_leaves_nothing_behind(tmp_path):
    reg = open_registry(tmp_path / "models")
    a = reg.publish(_release(tmp_path, "a", b"good")).version
    reg.artifact_path(a, "triton/alloynet/1/model.onnx").write_bytes(b"tampered")
    dest = tmp_path / "out"
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        reg.fetch(a, dest)
    assert not dest.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    # into an existing directory: its files are untouched by a failed fetch, replaced by a good one
    dest.mkdir()
    (dest / "checkpoint").mkdir()
    (dest / "checkpoint" / "model.ckpt").write_bytes(b"old")
    with pytest.raises(ArtifactIntegrityError):
        reg.fetch(a, dest)
    assert (dest / "checkpoint" / "model.ckpt").read_bytes() == b"old"
    reg.fetch(a, dest, only=["checkpoint"])
    assert (dest / "checkpoint" / "model.ckpt").read_bytes() == b"good"
    fresh = reg.fetch(a, tmp_path / "fresh", only=["checkpoint"])
    assert (fresh.stat().st_mode & 0o777) == ((tmp_path / "out").stat().st_mode & 0o777)  # like a plain mkdir


def test_registry_cli_discard_clean_and_store_outage(tmp_path, monkeypatch):
    from infra.processes import free_port

    runner = CliRunner()
    store = str(tmp_path / "models")
    reg = open_registry(store)
    reg.publish(_release(tmp_path, "a"))
    reg.store.put("alloynet/versions/v0002/claim.json", b"{}")
    res = runner.invoke(app, ["registry", "list", "-r", store])
    assert "v0002: unfinished publication" in res.output and "registry discard v0002" in res.output
    res = runner.invoke(app, ["registry", "discard", "v0002", "--reason", "killed", "-r", store])
    assert res.exit_code == 1 and "may still be publishing" in res.output
    res = runner.invoke(app, ["registry", "discard", "v0002", "--reason", "killed", "--force", "-r", store])
    assert res.exit_code == 0 and reg.unfinished() == {}
    res = runner.invoke(app, ["registry", "discard", "v0009", "--reason", "typo", "-r", store])
    assert res.exit_code == 1 and "no version v0009" in res.output
    res = runner.invoke(app, ["registry", "clean", "-r", store])
    assert res.exit_code == 0 and "0 temp file(s) removed, 0 unfinished" in res.output
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    res = runner.invoke(app, ["registry", "list", "-r", f"s3://models/r?endpoint=http://127.0.0.1:{free_port()}"])
    assert res.exit_code == 1 and res.output.startswith("error: object store unreachable: s3://models/r/")
    assert len(res.output.strip().splitlines()) == 1


# ---- the promotion rule -------------------------------------------------------------------------------
RULE = PromotionRule(min_margin=0.02, max_tail_recall_drop=0.05, max_thickness_mae_increase_mm=0.1)


def test_rule_first_champion_and_margin():
    assert decide(_metrics(0.3), None, RULE, ["Al7075"]).promote
    assert not decide(_metrics(0.3), None, RULE.model_copy(update={"min_primary": 0.5}), []).promote
    d = decide(_metrics(0.61), _metrics(0.60), RULE, ["Al7075"])
    assert not d.promote and "margin" in d.summary()
    d = decide(_metrics(0.63), _metrics(0.60), RULE, ["Al7075"])
    assert d.promote and d.deltas["balanced_accuracy"] == pytest.approx(0.03)


def test_rule_blocks_tail_recall_and_thickness_regressions():
    d = decide(_metrics(0.70, tail_recall=0.70), _metrics(0.60, tail_recall=0.80), RULE, ["Al7075"])
    assert not d.promote and "tail class Al7075" in d.summary()
    # the same drop on a head class is allowed
    assert decide(_metrics(0.70, tail_recall=0.70), _metrics(0.60, tail_recall=0.80), RULE, ["Al1050"]).promote
    d = decide(_metrics(0.70, mae=0.35), _metrics(0.60, mae=0.2), RULE, ["Al7075"])
    assert not d.promote and "thickness MAE" in d.summary()
    assert decide(_metrics(0.70, mae=0.29), _metrics(0.60, mae=0.2), RULE, ["Al7075"]).promote
    assert not decide({"macro_f1": 0.9}, _metrics(0.6), RULE, []).promote  # no primary metric


def test_tail_classes_and_best_candidate():
    df = pd.DataFrame(
        {
            "alloy": ["A"] * 6 + ["B"] * 3 + ["C"] * 1 + ["C"] * 5,
            "split": ["train"] * 10 + ["test"] * 5,
            "labelled": True,
        }
    )
    assert tail_classes(df, 1 / 3) == ["C"]
    assert tail_classes(df, 2 / 3) == ["C", "B"]
    assert (
        best_candidate(
            {"x": {"balanced_accuracy": 0.4}, "y": {"balanced_accuracy": 0.5}, "z": {"balanced_accuracy": float("nan")}}
        )
        == "y"
    )


# ---- the CLI -----------------------------------------------------------------------------------------------
def test_registry_cli_publish_promote_rollback(tmp_path):
    runner = CliRunner()
    store = str(tmp_path / "models")
    m = tmp_path / "m.json"
    m.write_text(json.dumps(_metrics(0.55)))
    for name in ("a", "b"):
        res = runner.invoke(
            app, ["registry", "publish", str(_release(tmp_path, name, name.encode())), "--metrics", str(m), "-r", store]
        )
        assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["registry", "promote", "v0001", "-r", store]).exit_code == 0
    assert runner.invoke(app, ["registry", "promote", "v0002", "-r", store, "--reason", "better"]).exit_code == 0
    res = runner.invoke(app, ["registry", "list", "-r", store])
    assert res.exit_code == 0 and "v0002" in res.output and "champion" in res.output and "0.5500" in res.output
    res = runner.invoke(app, ["registry", "rollback", "-r", store, "--reason", "regression in the field"])
    assert res.exit_code == 0 and "v0001" in res.output, res.output
    res = runner.invoke(app, ["registry", "champion", "-r", store])
    assert json.loads(res.output)["version"] == "v0001"
    res = runner.invoke(app, ["registry", "rollback", "-r", store])
    assert res.exit_code == 1 and "no previous champion" in res.output
    assert "regression in the field" in runner.invoke(app, ["registry", "history", "-r", store]).output
    res = runner.invoke(app, ["registry", "fetch", "champion", str(tmp_path / "f"), "-r", store])
    assert res.exit_code == 0 and (tmp_path / "f" / "checkpoint" / "model.ckpt").read_bytes() == b"a"
    open_registry(store).artifact_path("v0001", "checkpoint/model.ckpt").write_bytes(b"x")
    res = runner.invoke(app, ["registry", "verify", "-r", store])
    assert res.exit_code == 1 and "failed verification" in res.output


def test_alloynet_never_imports_prefect():
    import subprocess
    import sys

    # One fresh interpreter, two checks in order: the library alone never imports flows/, serving/ or Prefect;
    # then the CLI with every plugin loaded still does not import Prefect until a flow command runs.
    code = (
        "import sys; import alloynet.physics, alloynet.captures.ingest, alloynet.data.dataset, alloynet.models, "
        "alloynet.losses, alloynet.train, alloynet.evaluate.report, alloynet.export, alloynet.steps, alloynet.study; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flows', 'serving', 'prefect'));"
        "print('library:', bad); bad and sys.exit(1); "
        "import alloynet.registry; from alloynet.cli import app; "
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'));"
        "print('cli:', bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
