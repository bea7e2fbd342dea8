"""Rig profiles kept in the capture store: `rig fit` adds one, training starts from the newest (issue 23)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml

from alloynet.captures.rig_profiles import RIG_PROFILES, add_rig_profile, copy_rig_profile, newest_rig_profile
from alloynet.captures.stores import LocalStore
from alloynet.physics.rig_profile import RigProfile, load_rig_profile
from alloynet.physics.simulator import RigConfig
from alloynet.train.config import load_config, resolve
from alloynet.train.trainer import with_rig_profile

T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=timezone.utc)
T1 = datetime(2026, 12, 2, 9, 0, 0, tzinfo=timezone.utc)


def _profile(filtration: float) -> RigProfile:
    return RigProfile(rig=RigConfig(extra_filtration_mm_al=filtration), calibrated=["extra_filtration_mm_al"])


def test_profiles_are_added_never_overwritten_and_the_newest_wins(tmp_path):
    store = LocalStore(tmp_path)
    assert newest_rig_profile(store) is None
    first = add_rig_profile(store, _profile(0.1), b"\x89PNG fake", now=T0)
    again = add_rig_profile(store, _profile(0.2), None, now=T0)  # the same second: a new name, not a rewrite
    assert first != again and first.startswith(RIG_PROFILES) and again.startswith(RIG_PROFILES)
    assert yaml.safe_load(store.get(first))["rig"]["extra_filtration_mm_al"] == 0.1
    assert store.exists(first.replace(".yaml", "-fit.png"))
    assert newest_rig_profile(store) == again
    later = add_rig_profile(store, _profile(0.3), None, now=T1)
    assert newest_rig_profile(store) == later
    store.put(f"{RIG_PROFILES}notes.yaml", b"not a profile name")  # only stamped names count
    assert newest_rig_profile(store) == later


def test_a_broken_profile_in_the_store_is_refused_with_its_key(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put(f"{RIG_PROFILES}20261201T090000Z.yaml", b"format: something-else\n")
    with pytest.raises(ValueError, match=r"rig-profiles/20261201T090000Z.yaml in the capture store: not an alloynet"):
        copy_rig_profile(store, newest_rig_profile(store), tmp_path / "run" / "rig-profile.yaml")
    assert not (tmp_path / "run" / "rig-profile.yaml").exists()


def _cfg(tmp_path, **over):
    return resolve(load_config(None, {"data.store": str(tmp_path / "store"), "out_dir": str(tmp_path / "run"), **over}))


def test_training_starts_from_the_stores_newest_profile_and_keeps_a_copy(tmp_path):
    store = LocalStore(tmp_path / "store")
    assert with_rig_profile(_cfg(tmp_path)).data.synthetic.rig_profile is None  # none stored: the nominal rig
    add_rig_profile(store, _profile(0.1), None, now=T0)
    add_rig_profile(store, _profile(0.3), None, now=T1)
    cfg = with_rig_profile(_cfg(tmp_path))
    copy = tmp_path / "run" / "rig-profile.yaml"
    assert cfg.data.synthetic.rig_profile == str(copy)
    assert load_rig_profile(copy).rig.extra_filtration_mm_al == 0.3

    # a resumed run keeps the profile it started from; a new run takes the newest
    add_rig_profile(store, _profile(0.5), None, now=datetime(2026, 12, 3, tzinfo=timezone.utc))
    assert with_rig_profile(_cfg(tmp_path), resume=True).data.synthetic.rig_profile == str(copy)
    assert load_rig_profile(copy).rig.extra_filtration_mm_al == 0.3
    with_rig_profile(_cfg(tmp_path))
    assert load_rig_profile(copy).rig.extra_filtration_mm_al == 0.5

    # opting out, an explicit profile, and a simulated-capture profile that is already set all win over auto
    assert with_rig_profile(_cfg(tmp_path, **{"data.rig_profile": "none"})).data.synthetic.rig_profile is None
    own = tmp_path / "own.yaml"
    own.write_bytes(store.get(newest_rig_profile(store)))
    explicit = with_rig_profile(_cfg(tmp_path, **{"data.rig_profile": str(own)}))
    assert explicit.data.synthetic.rig_profile == str(own)
    set_already = with_rig_profile(_cfg(tmp_path, **{"data.synthetic.rig_profile": str(own)}))
    assert set_already.data.synthetic.rig_profile == str(own)
    with pytest.raises(ValueError, match="data.rig_profile: .*missing.yaml: rig profile not found"):
        with_rig_profile(_cfg(tmp_path, **{"data.rig_profile": str(tmp_path / "missing.yaml")}))


def test_ingest_brings_the_sources_rig_profiles_and_never_overwrites_one(tmp_path):
    from alloynet.captures.ingest import ingest

    source, dest = LocalStore(tmp_path / "upload"), LocalStore(tmp_path / "data")
    key = add_rig_profile(source, _profile(0.1), b"\x89PNG fake", now=T0)
    first = ingest(source, dest)
    assert sorted(first.rig_profiles) == sorted([key, key.replace(".yaml", "-fit.png")])
    assert newest_rig_profile(dest) == key and dest.get(key) == source.get(key)
    assert ingest(source, dest).rig_profiles == []  # already there: nothing copied again
    dest.put(key, b"edited here\n", overwrite=True)
    again = ingest(source, dest)
    assert again.rig_profile_conflicts == [key] and dest.get(key) == b"edited here\n"
    assert "differing from the stored ones (kept)" in again.summary()
