"""Publishing the champion's Triton repository to the S3 prefix the serving fleet reads (real SeaweedFS)."""

import json

import pytest
from typer.testing import CliRunner

from alloynet.captures.stores import S3Store
from alloynet.cli import app
from alloynet.registry import RegistryError, open_registry
from alloynet.registry.publish import publish_triton

pytestmark = pytest.mark.s3


def _release(root, tag: str):
    for model in ("alloynet", "alloynet_b"):
        (root / "triton-gpu" / model / "1").mkdir(parents=True)
        (root / "triton-gpu" / model / "config.pbtxt").write_text(f'name: "{model}"  # {tag}\n')
        (root / "triton-gpu" / model / "1" / "model.onnx").write_bytes(f"onnx-{tag}".encode())
    (root / "checkpoint").mkdir()
    (root / "checkpoint" / "model.ckpt").write_bytes(tag.encode())
    return root


def test_champion_becomes_the_newest_triton_version_and_rollback_too(s3_server, s3_bucket, tmp_path):
    reg = open_registry(tmp_path / "registry")
    target = S3Store(s3_bucket, "serving/triton", endpoint_url=s3_server.endpoint)
    with pytest.raises(RegistryError, match="no champion"):
        publish_triton(reg, target)
    v1 = reg.publish(_release(tmp_path / "r1", "v1"), metrics={}).version
    reg.promote(v1, "first")
    m1 = publish_triton(reg, target)
    assert target.get(f"alloynet/{m1['generation']}/model.onnx") == b"onnx-v1"
    v2 = reg.publish(_release(tmp_path / "r2", "v2"), metrics={}).version
    reg.promote(v2, "better")
    m2 = publish_triton(reg, target)
    assert m2["generation"] > m1["generation"] and m2["models"] == ["alloynet", "alloynet_b"]
    assert target.get(f"alloynet_b/{m2['generation']}/model.onnx") == b"onnx-v2"
    assert b"v2" in target.get("alloynet/config.pbtxt")

    # a rollback is a new generation: the old champion's files become the newest Triton version
    res = CliRunner().invoke(
        app,
        [
            "registry",
            "rollback",
            "-r",
            str(tmp_path / "registry"),
            "--serve-to",
            f"s3://{s3_bucket}/serving/triton?endpoint={s3_server.endpoint}",
        ],
    )
    assert res.exit_code == 0, res.output
    marker = json.loads(target.get("CHAMPION.json"))
    assert marker["version"] == v1 and marker["generation"] > m2["generation"]
    assert target.get(f"alloynet/{marker['generation']}/model.onnx") == b"onnx-v1"
    versions = {k.key.split("/")[1] for k in target.list("alloynet/") if k.key.count("/") == 2}
    assert versions == {str(m2["generation"]), str(marker["generation"])}  # keep=2 pruned the oldest


def test_tampered_artifacts_are_never_published(s3_server, s3_bucket, tmp_path):
    reg = open_registry(tmp_path / "registry")
    v1 = reg.publish(_release(tmp_path / "r1", "v1"), metrics={}).version
    reg.promote(v1, "first")
    reg.artifact_path(v1, "triton-gpu/alloynet/1/model.onnx").write_bytes(b"tampered")
    target = S3Store(s3_bucket, "serving/triton", endpoint_url=s3_server.endpoint)
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        publish_triton(reg, target)
    assert list(target.list()) == []
