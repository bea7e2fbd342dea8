"""The serving env file: one writer (infra, through serving.endpoint), every reader through the same module."""

from __future__ import annotations

import pytest

from serving import endpoint


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in (*endpoint.SETTINGS, endpoint.ENV_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(endpoint.SERVE_DIR_ENV, str(tmp_path))
    return monkeypatch


def test_what_is_written_is_read_back_quoted_and_atomically(clean_env, tmp_path):
    path = endpoint.env_file_path(tmp_path)
    env = {endpoint.URL_VAR: "triton://127.0.0.1:18001/alloynet", endpoint.KEY_FILE_VAR: str(tmp_path / "a b'c.json")}
    assert endpoint.write_env_file(path, env) == path == tmp_path / "serving.env"
    assert endpoint.read_env_file(path) == env
    assert path.read_text().startswith("# written by `alloynet serve start`")
    assert [p.name for p in tmp_path.iterdir()] == ["serving.env"]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"serving.env: unknown serving setting\(s\) \['ALLOYNET_NOPE'\]"):
        endpoint.write_env_file(path, {"ALLOYNET_NOPE": "x"})
    assert endpoint.read_env_file(tmp_path / "missing.env") == {}


def test_settings_come_from_the_environment_then_the_env_file(clean_env, tmp_path):
    assert endpoint.default_serve_dir() == tmp_path and endpoint.env_file_path() == tmp_path / "serving.env"
    assert endpoint.default_url() == endpoint.DEFAULT_URL  # nothing served
    endpoint.write_env_file(endpoint.env_file_path(), {endpoint.URL_VAR: "triton://127.0.0.1:18001/alloynet"})
    assert endpoint.default_url() == "triton://127.0.0.1:18001/alloynet"
    clean_env.setenv(endpoint.URL_VAR, "triton://10.0.0.5:8001/alloynet")
    assert endpoint.default_url() == "triton://10.0.0.5:8001/alloynet"
    elsewhere = tmp_path / "other.env"
    endpoint.write_env_file(elsewhere, {endpoint.TORCHSERVE_URL_VAR: "torchserve://127.0.0.1:7070/alloynet"})
    clean_env.setenv(endpoint.ENV_FILE_ENV, str(elsewhere))
    assert endpoint.serving_setting(endpoint.TORCHSERVE_URL_VAR) == "torchserve://127.0.0.1:7070/alloynet"


def test_the_client_reexports_the_endpoint_names():
    import serving.client as client

    assert client.read_env_file is endpoint.read_env_file and client.URL_VAR == endpoint.URL_VAR
