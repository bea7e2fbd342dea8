"""`alloynet package triton --backend`: the served model's backend is chosen on the command line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from alloynet.cli import app
from alloynet.export import ExportMeta, export_model
from alloynet.physics import ALLOY_NAMES
from tests.helpers.serving import capture_inputs
from tests.unit.export.test_export import SIZE, standin


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    inputs = capture_inputs(2, size=SIZE)
    meta = ExportMeta(class_names=list(ALLOY_NAMES), channels=1, height=SIZE, width=SIZE, arch="standin")
    return export_model(standin(), meta, tmp_path_factory.mktemp("bundle"), inputs, log=lambda *_: None)


@pytest.mark.parametrize(
    "backend, says", [("alloynet_ort", 'backend: "alloynet_ort"'), ("onnxruntime", 'platform: "onnxruntime_onnx"')]
)
def test_the_backend_is_the_one_asked_for(bundle, tmp_path, backend, says):
    r = CliRunner().invoke(
        app,
        ["package", "triton", "--bundle", str(bundle.directory), "--out", str(tmp_path / "repo"), "--backend", backend],
    )
    assert r.exit_code == 0, r.output
    config = (tmp_path / "repo" / "alloynet" / "config.pbtxt").read_text()
    assert says in config and (tmp_path / "repo" / "alloynet" / "1" / "model.onnx").exists()


def test_an_unknown_backend_is_refused_naming_the_choices(bundle, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "package",
            "triton",
            "--bundle",
            str(bundle.directory),
            "--out",
            str(tmp_path / "repo"),
            "--backend",
            "pytorch",
        ],
    )
    assert r.exit_code != 0 and "--backend" in r.output and "onnxruntime" in r.output, r.output
    assert not (tmp_path / "repo").exists()


def test_infra_uses_the_backend_name_serving_declares():
    import infra.triton
    from serving.triton.repository import NATIVE_BACKEND

    assert not hasattr(infra.triton, "NATIVE_BACKEND") and NATIVE_BACKEND == "alloynet_ort"
