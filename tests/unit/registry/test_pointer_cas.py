"""The champion pointer as a compare-and-set with its audit event committed inside it."""

import pytest

from alloynet.captures.stores import LocalStore, ObjectChanged
from alloynet.registry import ModelRegistry, RegistryError, open_registry


def _release(tmp_path, name, payload):
    d = tmp_path / name
    d.mkdir()
    (d / "model.onnx").write_bytes(payload)
    return d


def _registry(tmp_path, n=3):
    reg = open_registry(tmp_path / "models")
    return reg, [reg.publish(_release(tmp_path, f"r{i}", f"w{i}".encode())).version for i in range(n)]


def _consistent(reg: ModelRegistry) -> None:
    p = reg._read_pointer()[0]
    moves = [e for e in reg.events() if e.get("generation") is not None]
    assert [e["generation"] for e in moves] == list(range(1, p.generation + 1))
    assert moves[-1]["version"] == (p.version or moves[-1]["version"])


def test_put_if_refuses_a_stale_version(tmp_path):
    store = LocalStore(tmp_path / "s")
    first = store.put_if("k", b"1", None)
    with pytest.raises(ObjectChanged):
        store.put_if("k", b"x", None)  # create-if-absent, but it exists
    second = store.put_if("k", b"2", first)
    with pytest.raises(ObjectChanged):
        store.put_if("k", b"3", first)  # a writer that read version 1 loses to the one that wrote 2
    assert store.get_versioned("k") == (b"2", second)
    assert [i.key for i in store.list()] == ["k"]  # the lock file is not an object


def test_a_writer_killed_after_the_commit_loses_no_event(tmp_path, monkeypatch):
    reg, (a, b, c) = _registry(tmp_path)
    reg.promote(a, "first")

    def killed(self, *args, **kwargs):
        raise SystemExit("killed between the pointer write and the event copy")

    monkeypatch.setattr(ModelRegistry, "_event", killed)
    with pytest.raises(SystemExit):
        reg.promote(b, "second")
    monkeypatch.undo()
    assert reg.pointer().version == b and reg.pointer().generation == 2
    assert [(e["action"], e["version"], e["reason"]) for e in reg.events()] == [
        ("promote", a, "first"),
        ("promote", b, "second"),
    ]  # the second comes from the pointer itself
    reg.promote(c, "third")  # the next move writes the missing copy
    assert len(list(reg.store.list("alloynet/events/"))) == 3
    _consistent(reg)


def test_stale_writer_is_refused_at_the_write(tmp_path, monkeypatch):
    """Another writer moves the pointer between this writer's read and its write: refused, nothing lost."""
    reg, (a, b, c) = _registry(tmp_path)
    reg.promote(a, "first")
    other = open_registry(tmp_path / "models")
    real_put_if = reg.store.put_if

    def racing_put_if(key, data, expected):
        if key.endswith("champion.json"):
            other.promote(c, "concurrent")
        return real_put_if(key, data, expected)

    monkeypatch.setattr(reg.store, "put_if", racing_put_if)
    with pytest.raises(RegistryError, match="moved meanwhile"):
        reg.promote(b, "stale")
    monkeypatch.undo()
    assert reg.pointer().version == c and reg.pointer().generation == 2
    assert [e["reason"] for e in reg.events()] == ["first", "concurrent"]


def test_retracting_the_first_champion_keeps_counting(tmp_path):
    reg, (a, b, _) = _registry(tmp_path)
    reg.promote(a, "first")
    assert reg.retract(a, "undo") is None and reg.pointer() is None and reg.champion() is None
    reg.promote(b, "again", expected_generation=0)  # what a caller that saw no champion passes
    assert reg.pointer().generation == 3 and reg.pointer().previous == []
    assert [e["action"] for e in reg.events()] == ["promote", "retract", "promote"]
    _consistent(reg)


def test_history_names_generations_and_escapes_reasons(tmp_path):
    from typer.testing import CliRunner

    from alloynet.cli import app

    reg, (a, b, _) = _registry(tmp_path)
    reg.promote(a, "first")
    reg.promote(b, "evil\x1b[2J\nfake line")
    res = CliRunner().invoke(app, ["registry", "history", "--registry", str(tmp_path / "models")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) == 2 and "\x1b" not in res.output
    assert "g2" in lines[1] and "promote" in lines[1] and "evil\\x1b[2J\\nfake line" in lines[1]
