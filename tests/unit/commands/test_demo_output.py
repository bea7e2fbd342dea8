"""What `alloynet demo` prints around the flow: one ingest line that explains the counts, Prefect's server chatter
left out, and next steps a user can type as they are."""

from __future__ import annotations

import logging
import sys

from flows import cli


def test_next_steps_name_the_program_as_the_user_can_type_it(tmp_path, monkeypatch):
    exe = tmp_path / ".venv" / "bin" / "alloynet"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(exe), "demo"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated, as after `make demo`
    assert cli.alloynet_command() == ".venv/bin/alloynet"
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")
    assert cli.alloynet_command() == "alloynet"

    home = tmp_path / "home"
    (home / "rig" / "captures").mkdir(parents=True)
    (home / "rig" / "captures" / "c1.png").write_bytes(b"")
    monkeypatch.setenv("ALLOYNET_HOME", str(home))
    monkeypatch.delenv("ALLOYNET_REGISTRY", raising=False)
    steps = [line.split("#")[0].strip() for line in cli.next_steps(home, ".venv/bin/alloynet")]
    assert steps == [
        "make serve",
        f".venv/bin/alloynet infer {home / 'rig' / 'captures' / 'c1.png'}",
        ".venv/bin/alloynet serve stop",
    ]
    monkeypatch.setenv("ALLOYNET_HOME", str(tmp_path / "elsewhere"))
    assert cli.next_steps(home)[0].startswith(f"make serve ALLOYNET_REGISTRY={home / 'registry'}")


def test_the_ingest_line_says_where_the_new_captures_went():
    res = {
        "ingest": {"new": [f"c{i}" for i in range(756)]},
        "new_by_split": {"train": 540, "val": 106, "test": 110},
        "quarantined": {"bad.json": "truncated"},
        "retrain": "646 new labelled captures >= threshold 1",
    }
    assert cli.ingest_line(res) == (
        "ingest: 756 new (646 training/validation, 110 test, 0 unlabelled), 1 quarantined; "
        "retrain: 646 new labelled captures >= threshold 1"
    )
    res["new_by_split"] = {}
    assert cli.ingest_line(res).startswith("ingest: 756 new, 1 quarantined; ")


def test_prefects_temporary_server_lines_are_left_out_and_its_other_lines_kept():
    prefect, seen = logging.getLogger("prefect"), []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler, filters = Keep(), list(prefect.filters)
    prefect.addHandler(handler)
    old_level, prefect.level = prefect.level, logging.INFO
    try:
        cli._quiet_prefect_console()
        prefect.info("Starting temporary server on http://127.0.0.1:8293\nSee https://docs.prefect.io/v3/...")
        prefect.info("Stopping temporary server on http://127.0.0.1:8293")
        prefect.info("Flow run 'x' - Finished in state Completed()")
    finally:
        prefect.removeHandler(handler)
        prefect.filters[:] = filters
        prefect.level = old_level
        logging.getLogger("alloynet").propagate = True
    assert seen == ["Flow run 'x' - Finished in state Completed()"]
