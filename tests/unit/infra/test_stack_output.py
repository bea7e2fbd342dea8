"""What infra/up.sh prints: the stack's URLs, the env file, the deployments and three commands."""

from __future__ import annotations

from infra import stack


def test_up_prints_urls_and_env_file_only(tmp_path):
    env = {
        "PREFECT_UI_URL": "http://127.0.0.1:4200",
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
    }
    lines = stack.stack_lines(tmp_path, env)
    assert lines[0] == "Prefect UI    http://127.0.0.1:4200"
    assert any("http://127.0.0.1:8333" in line for line in lines)
    assert lines[-1] == f"env file      {tmp_path / 'env.sh'}"
    assert not any("pid" in line for line in lines)


def test_deploy_keeps_prefects_boilerplate_in_a_log(tmp_path):
    boiler = "To execute flow runs from these deployments, start a worker ...\nprefect deployment run 'x/y'\n"
    automation = "automation 'alloynet: retrain after a line alarm that new labels can fix': 1234"
    lines = stack.deploy_lines(tmp_path, boiler + automation + "\n")
    assert (tmp_path / "deploy.log").read_text() == boiler + automation + "\n"
    text = "\n".join(lines)
    assert "To execute flow runs" not in text and "nightly/daily-0200-UTC" in text
    assert automation in lines
    commands = [line.split("#")[0].strip() for line in lines[lines.index("next:") + 1 :]]
    assert len({line.index("#") for line in lines[lines.index("next:") + 1 :]}) == 1  # comments in one column
    assert commands == [
        f"source {tmp_path / 'env.sh'}",
        "prefect deployment run 'nightly/manual'",
        f"infra/down.sh --dir {tmp_path}",
    ]
