"""`alloynet line log` and `alloynet label import` from the command line."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from typer.testing import CliRunner

from alloynet.monitor.record import Journal


def _app():
    from alloynet.cli import app

    return app


def test_line_log_prints_answers_since_and_escapes_ids(tmp_path):
    now = datetime.now(timezone.utc)
    j = Journal(str(tmp_path), writer="w")
    j.write(
        [
            {
                "at": (now - timedelta(days=3)).isoformat(),
                "source": "line",
                "capture_id": "old",
                "status": "ok",
                "alloy": "Al1050",
                "confidence": 0.9,
                "prediction_set": ["Al1050"],
                "group": "light",
            },
            {
                "at": now.isoformat(),
                "source": "line",
                "capture_id": "new\x1b[2J",
                "status": "ok",
                "alloy": "Al7075",
                "confidence": 0.7,
                "prediction_set": ["Al7075", "Al2017"],
                "group": "heavy",
                "model_version": "4",
            },
        ]
    )
    j.close()
    res = CliRunner().invoke(_app(), ["line", "log", "--since", "1d", "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "Al7075 p=0.700 set={Al7075,Al2017}" in res.output and "old" not in res.output
    assert "\x1b" not in res.output and "1 record(s)" in res.output
    res = CliRunner().invoke(
        _app(),
        ["line", "log", "--since", (now - timedelta(days=4)).date().isoformat(), "--store", str(tmp_path), "--json"],
    )
    assert "\x1b" not in res.output  # JSON escapes it; a reader gets the id back exactly
    assert [json.loads(x)["capture_id"] for x in res.output.splitlines()] == ["old", "new\x1b[2J"]
    bad = CliRunner().invoke(_app(), ["line", "log", "--since", "last week", "--store", str(tmp_path)])
    assert bad.exit_code != 0 and "--since" in bad.output


def test_label_import_refuses_a_file_without_who_and_changes_nothing(tmp_path):
    p = tmp_path / "results.csv"
    p.write_text("capture_id,alloy,method\nc1,Al1050,XRF\n")
    res = CliRunner().invoke(_app(), ["label", "import", str(p), "--store", str(tmp_path / "data")])
    assert res.exit_code == 1 and "missing column(s) ['who']" in res.output and "nothing was changed" in res.output
