"""The supervisor's parts on their own, without servers: releases, Triton's repository, health, keys."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from alloynet.registry.publish import serving_version
from infra.supervisor.health import Health
from infra.supervisor.keys import KeyKeeper
from infra.supervisor.releases import Release, Releases
from infra.supervisor.settings import ServeConfig
from infra.supervisor.triton_server import TritonServer


def _release(tmp_path, generation: int, config: bytes = b"name: 'alloynet'") -> Release:
    d = tmp_path / f"rel{generation}"
    model = d / "triton" / "alloynet"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"onnx %d" % generation)
    (model / "config.pbtxt").write_bytes(config)
    return Release(f"v{generation}", generation, d)


def test_a_release_is_numbered_by_the_pointers_serving_version(tmp_path):
    fetched = []

    def fetch(version, dest, only):
        fetched.append((version, only))
        dest.mkdir(parents=True)

    registry = SimpleNamespace(fetch=fetch, get=lambda version: SimpleNamespace(artifacts={}))
    releases = Releases(registry, tmp_path / "releases", ["triton/alloynet"])
    pointer = SimpleNamespace(version="v7", generation=12)
    rel = releases.fetch(pointer)
    assert rel.generation == serving_version(pointer) == 12 and rel.directory.name == "g00012-v7"
    assert releases.fetch(pointer) == rel and fetched == [("v7", ["triton/alloynet"])]  # fetched once
    other = releases.fetch(SimpleNamespace(version="v8", generation=13))
    releases.prune(other)
    assert [d.name for d in (tmp_path / "releases").iterdir()] == ["g00013-v8"]


def _published(tmp_path):
    """A local registry whose champion holds a Triton model and a checkpoint the server never fetches."""
    from alloynet.registry import open_registry

    src = tmp_path / "release"
    (src / "triton" / "alloynet" / "1").mkdir(parents=True)
    (src / "triton" / "alloynet" / "1" / "model.onnx").write_bytes(b"genuine weights")
    (src / "triton" / "alloynet" / "config.pbtxt").write_bytes(b"name: 'alloynet'")
    (src / "checkpoint").mkdir()
    (src / "checkpoint" / "model.ckpt").write_bytes(b"ckpt")
    reg = open_registry(tmp_path / "models")
    reg.promote(reg.publish(src).version, "first")
    return reg


@pytest.mark.parametrize("tamper", ["altered", "removed", "added", "symlinked"])
def test_a_cached_release_that_differs_from_the_registry_is_refused_and_fetched_again(tmp_path, tamper, capsys):
    reg = _published(tmp_path)
    releases = Releases(reg, tmp_path / "serve" / "releases", ["triton/alloynet"])
    rel = releases.fetch(reg.pointer())
    onnx = rel.directory / "triton" / "alloynet" / "1" / "model.onnx"
    assert onnx.read_bytes() == b"genuine weights"
    capsys.readouterr()
    if tamper == "altered":
        onnx.write_bytes(b"genuine weightz")
    elif tamper == "removed":
        onnx.unlink()
    elif tamper == "added":
        (onnx.parent / "extra.so").write_bytes(b"smuggled")
    else:
        (tmp_path / "other.onnx").write_bytes(b"other weights")
        onnx.unlink()
        onnx.symlink_to(tmp_path / "other.onnx")
    again = releases.fetch(reg.pointer())  # what `serve start` and a swap do
    assert again.directory == rel.directory and onnx.read_bytes() == b"genuine weights" and not onnx.is_symlink()
    assert sorted(p.name for p in onnx.parent.iterdir()) == ["model.onnx"]
    said = [line for line in capsys.readouterr().out.splitlines() if "refusing the cached release" in line]
    assert len(said) == 1 and rel.directory.name in said[0], said
    assert releases.mismatch(rel.version, rel.directory) is None
    # the untouched copy is used as it is: nothing said, nothing fetched
    assert releases.verified(again) == again and "refusing" not in capsys.readouterr().out


def test_triton_repository_holds_the_serving_version_and_the_one_before(tmp_path):
    server = TritonServer(ServeConfig(), tmp_path / "state", admin_key="k")
    model_dir = server.repo / "alloynet"
    dst, previous = server.install(_release(tmp_path, 3, b"three"))
    assert dst == model_dir / "3" and (dst / "model.onnx").read_bytes() == b"onnx 3" and previous is None
    for g in (4, 5, 6):
        _, previous = server.install(_release(tmp_path, g, b"gen %d" % g))
    assert previous == b"gen 5" and (model_dir / "config.pbtxt").read_bytes() == b"gen 6"
    server.prune(current=5)  # 6 failed to load: it goes; 5 serves, 4 stays for a quick way back
    assert sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) == ["4", "5"]


class _Server:
    def __init__(self, answers):
        self.pid, self.answers = 1, list(answers)

    def probe(self, timeout: float) -> bool:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_server_that_misses_probes_in_a_row_is_hung():
    servers = {"triton": _Server([False, OSError("refused"), True, False, False, False]), "torchserve": _Server([])}
    servers["torchserve"].pid = None  # not started: never probed
    health = Health(servers, every_s=5.0, hang_after=3)
    for _ in range(3):
        health.probe_all()
    assert health.unanswered == {"triton": 0} and not health.hung("triton")  # an answer resets the count
    for _ in range(3):
        health.probe_all()
    assert health.hung("triton") and "torchserve" not in health.unanswered
    health.restarting.add("triton")
    health.probe_all()  # being restarted: not probed (its answers list is empty: a probe would fail the test)
    health.restarted("triton")
    assert not health.hung("triton") and not health.restarting


def test_keys_with_a_quarter_of_their_lifetime_left_are_renewed(tmp_path, monkeypatch):
    from infra import torchserve

    soon = (datetime.now(timezone.utc) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    later = (datetime.now(timezone.utc) + timedelta(minutes=50)).strftime("%Y-%m-%dT%H:%M:%SZ")
    renewed = []
    monkeypatch.setattr(torchserve, "key_expiry", lambda d: {"inference": soon, "management": later})
    monkeypatch.setattr(torchserve, "refresh_key", lambda d, which: renewed.append((d, which)))
    keeper = KeyKeeper(tmp_path, token_expiry_min=60.0, lock=threading.Lock())  # a quarter: 15 minutes
    keeper.refresh()
    assert renewed == [(tmp_path, "inference")] and keeper.renewed == 1
    monkeypatch.setattr(torchserve, "key_expiry", lambda d: (_ for _ in ()).throw(OSError("not written yet")))
    keeper.refresh()
    assert keeper.renewed == 1


class _Triton:
    """Triton as the supervisor sees it: READY answers in turn, loads counted."""

    def __init__(self, ready):
        self.pid, self.info, self.ready, self.loads, self.installed = os.getpid(), {"restarts": 0}, list(ready), 0, []

    def model_ready(self, timeout):
        return self.ready.pop(0)

    def install(self, release):
        self.installed.append(release.generation)

    def load(self):
        self.loads += 1


def _supervisor(tmp_path, triton):
    from infra.supervisor import Supervisor

    sup = Supervisor.__new__(Supervisor)  # the loop's parts without a registry or servers behind them
    sup.cfg, sup.triton, sup.serving = ServeConfig(), triton, _release(tmp_path, 4)
    sup.releases = SimpleNamespace(verified=lambda release: release)
    sup.states = []
    sup.write_state = lambda: sup.states.append(dict(triton.info))
    return sup


def test_a_model_that_is_not_ready_is_loaded_again_and_the_state_says_so(tmp_path):
    triton = _Triton([True, False, True, True])
    sup = _supervisor(tmp_path, triton)
    sup.check_ready()
    assert triton.loads == 0 and triton.info["ready"] is True
    sup.check_ready()  # unloaded behind its back: said, loaded from the verified release, said again
    assert triton.loads == 1 and triton.installed == [4] and triton.info == {"restarts": 0, "ready": True, "reloads": 1}
    assert [s.get("ready") for s in sup.states] == [False, True]
    sup.check_ready()
    assert triton.loads == 1


def test_a_server_that_does_not_answer_is_left_to_the_health_probes(tmp_path):
    triton = _Triton([None])
    sup = _supervisor(tmp_path, triton)
    sup.check_ready()
    assert triton.loads == 0 and "ready" not in triton.info and not sup.states


def test_the_repository_copy_is_compared_with_the_release(tmp_path):
    server = TritonServer(ServeConfig(), tmp_path / "state", admin_key="k")
    rel = _release(tmp_path, 3)
    assert not server.installed_matches(rel)
    dst, _ = server.install(rel)
    assert server.installed_matches(rel)
    (dst / "model.onnx").write_bytes(b"onnx 0")
    assert not server.installed_matches(rel)


def test_reload_installs_and_loads_the_verified_release_when_the_repository_copy_differs(tmp_path):
    triton = _Triton([])
    sup = _supervisor(tmp_path, triton)
    checked = []
    sup.releases = SimpleNamespace(verified=lambda release: checked.append(release) or release)
    triton.installed_matches = lambda release: True
    sup.recheck_release()
    assert checked == [sup.serving] and triton.loads == 0 and triton.installed == []
    triton.installed_matches = lambda release: False  # e.g. a weight zeroed in <serve dir>/triton/repository
    sup.recheck_release()
    assert triton.loads == 1 and triton.installed == [4]
