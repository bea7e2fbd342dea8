"""A local source is a boundary: links out of it are not followed, nothing outside is read or copied, a
vanished or unreadable file is that capture's problem only, and names from outside are printed escaped."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from alloynet.captures.ingest import ingest
from alloynet.captures.layout import list_quarantine
from alloynet.captures.stores import LocalStore, ObjectMissing, ObjectRefused
from alloynet.cli import app
from alloynet.console import printable
from tests.helpers.dummy import DummyCaptureStore

SIZES = {(32, 32)}


@pytest.fixture
def source():
    with DummyCaptureStore(n_max=3, size=32, imbalance_ratio=3) as (st, manifest):
        yield st, list(manifest.capture_id)


def _copied(dest: LocalStore, secret: bytes) -> list[str]:
    return [str(p) for p in dest.root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_links_out_of_the_source_are_refused_and_nothing_of_them_is_copied(source, tmp_path):
    src, ids = source
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_bytes(b'{"root:x:0:0": "secret-sidecar"}')
    (outside / "secret.png").write_bytes(b"secret-image")
    os.symlink(outside / "secret.json", src.root / "captures" / "p.json")
    img = src.root / "captures" / f"{ids[0]}.png"
    img.rename(outside / "real.png")
    os.symlink(outside / "real.png", img)  # a capture whose image lives outside the source
    inside = src.root / "captures" / f"{ids[1]}.json"
    inside.rename(src.root / "elsewhere.json")
    os.symlink(src.root / "elsewhere.json", inside)  # a link that stays inside the root: followed
    with pytest.raises(ObjectRefused, match="symbolic link to outside"):
        src.get("captures/p.json")
    dest = LocalStore(tmp_path / "dest")
    res = ingest(src, dest, accepted_sizes=SIZES)
    assert set(res.quarantined) == {"captures/p.json", f"captures/{ids[0]}.json"}
    assert "symbolic link to outside" in res.quarantined["captures/p.json"]
    assert "symbolic link to outside" in res.quarantined[f"captures/{ids[0]}.json"]
    assert ids[1] in res.new and ids[0] not in res.new
    assert _copied(dest, b"secret") == [] and _copied(dest, (outside / "real.png").read_bytes()) == []


def test_a_vanished_or_unreadable_file_is_that_captures_problem(source, tmp_path):
    src, ids = source
    os.symlink(tmp_path / "nowhere.json", src.root / "captures" / "dangling.json")
    fifo = src.root / "captures" / f"{ids[0]}.json"
    kept = fifo.read_bytes()
    fifo.unlink()
    os.mkfifo(fifo)  # listed like a file; reading it would block for ever
    with pytest.raises(ObjectMissing, match="not a regular file"):
        src.get(f"captures/{ids[0]}.json")
    dest = tmp_path / "dest"
    res = CliRunner().invoke(app, ["ingest", str(src.root), str(dest), "--accept-size", "32x32"])
    assert res.exit_code == 0, res.output
    assert f"{len(ids) - 1} new" in res.output and "2 vanished" in res.output
    assert str(dest) not in res.output  # nothing blames the destination
    fifo.unlink()
    fifo.write_bytes(kept)
    os.utime(fifo)  # a re-upload: newer than the watermark
    again = ingest(src, LocalStore(dest), accepted_sizes=SIZES)
    assert again.new == [ids[0]]


def test_names_from_outside_are_printed_escaped(source, tmp_path):
    src, _ = source
    key = "captures/x\x1b[2J\nquarantined captures/fake.json: all good.json"
    (src.root / key).parent.mkdir(parents=True, exist_ok=True)
    (src.root / key).write_bytes(b"{}")
    res = CliRunner().invoke(app, ["ingest", str(src.root), str(tmp_path / "dest"), "--accept-size", "32x32"])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output
    assert "x\\x1b[2J\\nquarantined captures/fake.json" in res.output
    assert not any(line.startswith("quarantined captures/fake.json") for line in res.output.splitlines())
    listed = CliRunner().invoke(app, ["data", "quarantine", str(tmp_path / "dest")])
    assert "\x1b" not in listed.output and "1 quarantined" in listed.output
    assert [e["source"] for e in list_quarantine(LocalStore(tmp_path / "dest"))] == [f"{src.uri}/{key}"]


def test_printable_escapes_only_what_is_not_printable():
    assert printable("Al7075 plate-3.png") == "Al7075 plate-3.png"
    assert printable("a\x1b[2Jb\nc\u202ed\x00") == "a\\x1b[2Jb\\nc\\u202ed\\x00"
