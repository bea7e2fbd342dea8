"""A sidecar's validity never depends on which alloys a process happens to know."""

import json
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pytest

from alloynet.captures.format import make_sidecar, parse_sidecar
from alloynet.captures.image import CaptureError, encode_image


def _sidecar_bytes(alloy: str) -> bytes:
    image = np.full((1, 8, 8), 1000, np.uint16)
    data, fmt = encode_image(image)
    sc = make_sidecar(
        "c1",
        image,
        data,
        fmt,
        rig={"kvp": [50.0], "wedge_mm": 50.0},
        calibration={"session": "s", "dark_adu": [1000.0], "flat_adu": [50000.0]},
        acquired_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        truth={"alloy": "Al1050", "nominal_thickness_mm": 2.0},
    )
    raw = json.loads(sc.model_dump_json())
    raw["truth"]["alloy"] = alloy
    return json.dumps(raw).encode()


def test_an_alloy_outside_the_standard_table_is_a_valid_capture_in_any_process():
    data = _sidecar_bytes("Al3003")
    assert parse_sidecar(data).truth.alloy == "Al3003"
    # a fresh interpreter, where nothing could have added Al3003 to any table, reads it the same way
    code = (
        "import sys; from alloynet.captures.format import parse_sidecar; "
        "print(parse_sidecar(sys.stdin.buffer.read()).truth.alloy)"
    )
    res = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().strip() == "Al3003"


@pytest.mark.parametrize("bad", ["", "../Al1050", "Al 1050", "x" * 65])
def test_a_malformed_alloy_name_is_refused_naming_the_field(bad):
    with pytest.raises(CaptureError) as err:
        parse_sidecar(_sidecar_bytes(bad), "c1.json")
    assert err.value.field == "truth.alloy" and "c1.json" in str(err.value)
