"""Which rig evaluation describes by default: the one the physics term was tabulated from.

A run keeps the rig profile it started from (the store's, or the rig fitted to its labelled captures); where
training's captures chose the nominal rig over it, the ceiling and the physics fit must describe the nominal rig
too, not the profile the model does not use.
"""

from alloynet.evaluate.report import trained_rig_profile


def _meta(path, start=None, simulator="alloynet"):
    meta = {"config": {"data": {"synthetic": {"rig_profile": str(path), "simulator": simulator}}}}
    if start:
        meta["physics_correction"] = {"start": start}
    return meta


def test_the_profile_the_term_started_from_is_the_default(tmp_path):
    profile = tmp_path / "rig-profile.yaml"
    profile.write_text("rig: {}\n")
    assert trained_rig_profile(_meta(profile, "rig profile")) == str(profile)
    assert trained_rig_profile(_meta(profile)) == str(profile)  # no choice recorded: the profile it was given


def test_a_profile_the_captures_turned_down_is_not(tmp_path):
    profile = tmp_path / "rig-profile.yaml"
    profile.write_text("rig: {}\n")
    assert trained_rig_profile(_meta(profile, "nominal rig")) is None
    assert trained_rig_profile(_meta(tmp_path / "gone.yaml", "rig profile")) is None
    assert trained_rig_profile(_meta(profile, "rig profile", simulator="second_rig")) is None
