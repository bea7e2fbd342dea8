"""One nominal rig: the sidecar, the alloynet simulator and the second rig share its fields and limits."""

from datetime import datetime, timezone

import numpy as np
import pytest
from pydantic import ValidationError

from alloynet.captures.format import RigInfo, make_sidecar
from alloynet.captures.image import encode_image
from alloynet.physics.rig import NOMINAL_FIELDS, NominalPanel, NominalRig, wedge_columns_mm
from alloynet.physics.second_rig import SecondRigConfig
from alloynet.physics.simulator import RigConfig


def _declared(model, name):
    f = model.model_fields[name]
    default = None if f.is_required() else f.get_default(call_default_factory=True)
    return str(f.annotation), default, f.metadata, f.description


def test_every_rig_description_is_a_nominal_rig_with_the_same_fields_and_defaults():
    assert issubclass(RigInfo, NominalRig) and issubclass(RigConfig, NominalPanel)
    assert issubclass(SecondRigConfig, NominalPanel)
    for name in NOMINAL_FIELDS:
        assert _declared(RigConfig, name) == _declared(SecondRigConfig, name) == _declared(NominalPanel, name), name
    for name in set(NominalRig.model_fields) - {"kvp", "wedge_mm"}:  # a sidecar must say these two
        assert _declared(RigInfo, name) == _declared(NominalRig, name), name
    assert RigInfo.model_fields["kvp"].is_required() and RigInfo.model_fields["wedge_mm"].is_required()


@pytest.mark.parametrize("model", [RigConfig, SecondRigConfig, RigInfo])
@pytest.mark.parametrize(
    "field, value, words",
    [
        ("kvp", [], "at least 1 item"),
        ("kvp", [-50.0], "greater than 0"),
        ("anode_angle_deg", 95.0, "less than 90"),
        ("wedge_mm", 0.0, "greater than 0"),
        ("filtration_mm_al", float("nan"), "finite number"),
        ("wedge_material", "lead", "'Al' or 'PMMA'"),
    ],
)
def test_the_limits_are_the_same_everywhere(model, field, value, words):
    values = {"kvp": [50.0], "wedge_mm": 50.0, field: value}
    with pytest.raises(ValidationError, match=words):
        model(**values)


def test_a_sidecar_written_from_a_rig_gives_that_rig_back():
    rig = RigConfig(
        height=16,
        width=16,
        kvp=[40.0, 60.0],
        wedge_mm=70.0,
        wedge_min_mm=2.0,
        filtration_mm_al=0.5,
        wedge_material="PMMA",
        open_beam_rows=3,
        tube_current_ua=250.0,
        anode_angle_deg=15.0,
    )
    image = np.full((2, 16, 16), 1000, np.uint16)
    data, fmt = encode_image(image)
    sc = make_sidecar(
        "c1",
        image,
        data,
        fmt,
        rig={**rig.nominal_settings(), "dose": rig.dose},
        calibration={"session": "s", "dark_adu": [1.0, 1.0], "flat_adu": [2.0, 2.0]},
        acquired_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
    )
    back = RigConfig(**sc.rig.nominal_settings(), height=16, width=16, dose=sc.rig.dose)
    assert back == rig
    plain = rig.model_copy(update={"open_beam_rows": 0})
    assert SecondRigConfig.from_nominal(plain).panel_settings() == plain.panel_settings()


def test_the_second_rig_images_no_open_beam_strip():
    with pytest.raises(ValidationError, match="images no open-beam strip"):
        SecondRigConfig.from_nominal(RigConfig(open_beam_rows=4))


def test_wedge_columns_are_a_plate_only_strip_then_a_ramp():
    w = wedge_columns_mm(RigConfig(width=8, wedge_margin_px=2, wedge_min_mm=1.0, wedge_mm=6.0))
    np.testing.assert_allclose(w, [0, 0, 1, 2, 3, 4, 5, 6])
