"""Class counts of long-tailed sets, reproducible simulation, leak-free splits, the Dataset and preprocessing."""

import numpy as np
import pandas as pd
import pytest
import torch

from alloynet.captures.stores import LocalStore
from alloynet.data import CLASS_NAMES
from alloynet.data.class_counts import class_counts
from alloynet.data.dataset import CaptureDataset
from alloynet.data.manifest import assign_splits, build_manifest, manifest_hash, read_manifest, write_manifest
from alloynet.data.simulate import DatasetSpec, simulate_dataset
from alloynet.data.transforms import Preprocess, TrainAugment, wedge_profile
from alloynet.physics import RigConfig
from alloynet.train.data import fit_preprocess
from tests.helpers.dummy import DummyCaptureStore


def test_class_counts_of_each_imbalance():
    assert class_counts(1000, 5, 100) == [1000, 316, 100, 32, 10]
    assert class_counts(100, 4, 10, "step") == [100, 100, 10, 10]
    assert class_counts(7, 5, 100, "balanced") == [7] * 5
    assert class_counts(10, 5, 1000)[-1] == 1  # never an empty class
    with pytest.raises(ValueError, match="imbalance_ratio"):
        class_counts(10, 5, 0.5)


def test_a_spec_with_the_old_key_profile_loads_the_same_with_a_warning():
    """``profile`` was the class-count shape's field until the word was left to the wedge profile: YAML and stored
    specs that use it load, for one release, with a warning; given beside ``imbalance`` it must agree."""
    new = DatasetSpec(imbalance="step", n_max=7)
    with pytest.warns(FutureWarning, match="'profile' is renamed 'imbalance'"):
        old = DatasetSpec.model_validate({"profile": "step", "n_max": 7})
    assert old == new and old.plates_per_class() == new.plates_per_class()
    assert "profile" not in old.model_dump() and old.model_dump()["imbalance"] == "step"
    with pytest.warns(FutureWarning):  # a stored spec.json goes through the same path
        assert DatasetSpec.model_validate_json('{"profile": "balanced"}').imbalance == "balanced"
    with pytest.warns(FutureWarning):
        assert DatasetSpec.model_validate({"profile": "step", "imbalance": "step"}).imbalance == "step"
    with pytest.raises(ValueError, match="imbalance: 'balanced' and profile: 'step' disagree"):
        DatasetSpec.model_validate({"profile": "step", "imbalance": "balanced"})


def _spec(**kw):
    base = dict(n_max=6, imbalance_ratio=6, captures_per_plate=2, rig=RigConfig(height=32, width=32))
    base.update(kw)
    return DatasetSpec(**base)


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a, b, c = (LocalStore(tmp_path / n) for n in "abc")
    simulate_dataset(_spec(seed=3), a)
    simulate_dataset(_spec(seed=3), b)
    simulate_dataset(_spec(seed=4), c)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in files)
    ma, mc = build_manifest(a, seed=3), build_manifest(c, seed=4)
    assert manifest_hash(ma) == manifest_hash(build_manifest(b, seed=3))
    assert set(ma.sha256).isdisjoint(set(mc.sha256))


def test_long_tail_protocol_splits(tmp_path):
    spec = _spec(n_max=30, imbalance_ratio=10, class_order=["Al7075", "Al2017", "Al1050", "Al6082", "Al5083"])
    store = LocalStore(tmp_path)
    simulate_dataset(spec, store)
    df = build_manifest(store, seed=0)
    assert df.groupby("plate_id").split.nunique().max() == 1  # leak-free: a plate lives in one split
    test_plates = df[df.split == "test"].groupby("alloy").plate_id.nunique()
    assert len(set(test_plates)) == 1 and len(test_plates) == 5  # balanced test set, every class
    # each class's test plates cover the thicknesses as evenly as possible
    per_t = df[df.split == "test"].drop_duplicates("plate_id").groupby(["alloy", "nominal_thickness_mm"]).size()
    assert per_t.groupby(level=0).agg(lambda s: s.max() - s.min()).max() <= 1
    trainval = df[df.split.isin(["train", "val"])].drop_duplicates("plate_id").groupby("alloy").size()
    expected = dict(zip(spec.class_order, class_counts(30, 5, 10)))
    assert trainval.to_dict() == expected  # train+val follow the requested class counts
    assert set(df[df.split == "val"].alloy) == set(CLASS_NAMES)
    counts = df.split.value_counts(normalize=True)
    assert 0.1 < counts["val"] < 0.22 and 0.1 < counts["test"] < 0.3


def test_splits_stay_frozen_when_data_grows():
    plates = pd.DataFrame(
        {
            "plate_id": [f"p{i}" for i in range(60)],
            "alloy": [CLASS_NAMES[i % 5] for i in range(60)],
            "nominal_thickness_mm": [1.0] * 60,
            "labelled": [True] * 60,
        }
    )
    first = assign_splits(plates, seed=1)
    more = pd.concat(
        [
            plates,
            pd.DataFrame(
                {
                    "plate_id": [f"q{i}" for i in range(20)],
                    "alloy": [CLASS_NAMES[i % 5] for i in range(20)],
                    "nominal_thickness_mm": [2.0] * 20,
                    "labelled": [True] * 20,
                }
            ),
        ]
    )
    second = assign_splits(more, seed=1, previous=first)
    merged = second.merge(first, on="plate_id", suffixes=("", "_before"))
    assert (merged.split == merged.split_before).all()
    assert set(second[second.plate_id.str.startswith("q")].split) <= {"train", "val"}


def test_manifest_roundtrip_and_unlabelled(tmp_path):
    with DummyCaptureStore(n_max=3, size=32) as (store, df):
        path = tmp_path / "m.csv"
        write_manifest(df, path)
        back = read_manifest(path)
        assert manifest_hash(back) == manifest_hash(df) and back.labelled.all()
        assert back.label.tolist() == [CLASS_NAMES.index(a) for a in back.alloy]
    with pytest.raises(FileNotFoundError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


@pytest.fixture(scope="module")
def dummy():
    with DummyCaptureStore(n_max=4, size=32, imbalance_ratio=2, captures_per_plate=1) as (store, df):
        yield store, df


def test_dataset_items_and_targets(dummy):
    store, df = dummy
    ds = CaptureDataset(store, df, split="train")
    x, cal, wedge, y = ds[0]
    row = ds.rows.iloc[0]
    assert cal.shape == (1, 2) and cal[0].tolist() == pytest.approx([float(row.dark_adu), float(row.flat_adu)])
    assert wedge.tolist() == [row.wedge_mm]
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32) and float(x.max()) > 1000
    assert int(y["alloy"]) == CLASS_NAMES.index(row.alloy)
    assert float(y["thickness_mm"]) == pytest.approx(row.thickness_mm)
    assert float(y["mu_eff"]) == pytest.approx(float(y["a0"]) / (float(y["thickness_mm"]) / 10), rel=1e-5)
    with pytest.raises(ValueError, match="no captures in split 'nope'"):
        CaptureDataset(store, df, split="nope")


def test_preprocess_gives_the_physics_a0_at_the_thin_end(dummy):
    store, df = dummy
    pre = fit_preprocess(df[df.split == "train"])
    ds = CaptureDataset(store, df, split=None)
    errs = []
    for i in range(len(ds)):
        x, cal, _, y = ds[i]
        col0 = pre.neg_log(x[None], cal[None])[0][0, 0, :, 0]
        errs.append(float(col0.median()) - float(y["a0"]))
    assert abs(np.mean(errs)) < 0.02  # heel effect and scatter average out across rows
    items = [ds[i] for i in range(len(ds))]
    _, missing, out = pre(torch.stack([x for x, *_ in items]), torch.stack([c for _, c, *_ in items]))
    assert not missing.any() and not out.any()  # every capture's own levels, all inside the training range


def test_augmentation_keeps_wedge_direction_and_is_deterministic(dummy):
    store, df = dummy
    aug = TrainAugment(p_flip=1.0, p_erase=1.0)
    ds = CaptureDataset(store, df, split="train", transform=aug, seed=5)
    x1, _, _, _ = ds[0]
    x2, _, _, _ = ds[0]
    assert torch.equal(x1, x2)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x1)
    raw = CaptureDataset(store, df, split="train")[0][0]
    prof_raw, prof_aug = wedge_profile(raw)[0], wedge_profile(x1)[0]
    # the wedge still thickens to the right: signal falls along x in both
    assert prof_aug[:4].mean() > prof_aug[-4:].mean() * 5 and prof_raw[:4].mean() > prof_raw[-4:].mean() * 5
    assert torch.corrcoef(torch.stack([prof_raw, prof_aug]))[0, 1] > 0.95
    # a row flip alone is exact and leaves the column profile unchanged
    flip_only = TrainAugment(p_flip=1.0, max_rotation_deg=0, noise=0, p_erase=0)
    flipped = flip_only(raw, torch.Generator().manual_seed(0))
    assert torch.equal(flipped, raw.flip(-2)) and torch.allclose(wedge_profile(flipped), wedge_profile(raw))


def test_preprocess_rejects_bad_calibration():
    with pytest.raises(ValueError, match="flat level must exceed dark"):
        Preprocess([1000.0], [900.0])
    with pytest.raises(ValueError, match="one value per channel"):
        Preprocess([1000.0, 1000.0], [5e4])


def test_preprocess_exports_to_torchscript():
    pre = Preprocess([1000.0], [50000.0], mean=2.0, std=1.5, equalize=True)
    x = torch.rand(2, 1, 8, 8) * 49000 + 1000
    cal = torch.tensor([[[1000.0, 50000.0]], [[0.0, 0.0]]])
    traced = torch.jit.trace(pre, (x, cal))
    assert all(torch.allclose(a, b) for a, b in zip(traced(x, cal), pre(x, cal)))
    scripted = torch.jit.script(pre)  # scripting too, so models that embed it can be scripted
    assert all(torch.allclose(a, b) for a, b in zip(scripted(x, cal), pre(x, cal)))
    assert Preprocess(**pre.config()).config() == pre.config()


def test_each_capture_is_corrected_with_its_own_calibration():
    """A session whose tube gave 3 % more output (its flat says so) reads the same -ln T as a nominal one;
    a capture sent without calibration falls back to the reference levels and says so; levels far outside
    what training saw are flagged."""
    from alloynet.physics import RigSimulator, sample_plate

    sim = RigSimulator(RigConfig(height=32, width=32))
    pre = Preprocess([1000.0], [50000.0], span_range=([49000.0], [49000.0]), tolerance=0.05)
    plate = sample_plate("Al6082", 2.0, np.random.default_rng(0), "p")
    caps = [sim.capture(plate, np.random.default_rng(1), gain_scale=g) for g in (1.0, 1.03)]
    x = torch.stack([torch.from_numpy(c.image.astype(np.float32)) for c in caps])
    own = torch.tensor([[[c.dark_adu[0], c.flat_adu[0]]] for c in caps])
    a, missing, out = pre.neg_log(x, own)
    prof = wedge_profile(a)[:, 0, :8].mean(1)
    assert abs(float(prof[1] - prof[0])) < 0.002 and not missing.any() and not out.any()
    # the training levels for both (what the exported graph did before): 3 % drift is a 0.03 shift in -ln T
    a_ref, missing, _ = pre.neg_log(x, torch.zeros_like(own))
    assert missing.tolist() == [1.0, 1.0]
    assert abs(float(wedge_profile(a_ref)[1, 0, :8].mean() - prof[0]) + 0.0296) < 0.003
    _, _, out = pre.neg_log(x, torch.tensor([[[1000.0, 50000.0]], [[1000.0, 56000.0]]]))  # span +14 %
    assert out.tolist() == [0.0, 1.0]


def test_manifest_of_an_empty_store(tmp_path):
    df = build_manifest(LocalStore(tmp_path))
    assert df.empty and list(df.columns)[-1] == "split"


def test_concurrent_manifest_writes_never_collide(tmp_path):
    import threading

    df = pd.DataFrame({"capture_id": [f"c{i}" for i in range(200)], "sha256": "0" * 64, "split": "train"})
    path = tmp_path / "manifest.csv"
    errors = []

    def writer():
        try:
            for _ in range(20):
                write_manifest(df, path)
        except Exception as exc:  # noqa: BLE001 - any failure fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(pd.read_csv(path)) == 200
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]  # no temp file left behind


def test_ingest_and_refresh_writes_the_manifest_only_after_a_whole_ingest(tmp_path):
    from alloynet.captures.stores import StoreUnavailable
    from alloynet.data.manifest import ingest_and_refresh

    with DummyCaptureStore(n_max=3, size=32, imbalance_ratio=3) as (src, df):

        class DiesAfterFive:
            def __init__(self):
                self.uri, self.left = src.uri, 5 * 2

            def get(self, key):
                self.left -= 1
                if self.left < 0:
                    raise StoreUnavailable("object store unreachable: test")
                return src.get(key)

            def __getattr__(self, name):
                return getattr(src, name)

        dest = LocalStore(tmp_path / "dest")
        with pytest.raises(StoreUnavailable):
            ingest_and_refresh(DiesAfterFive(), dest, accepted_sizes={(32, 32)})
        assert not (dest.root / "manifest.csv").exists()  # no half-batch manifest freezing a tiny test set
        res, m, changed = ingest_and_refresh(src, dest, accepted_sizes={(32, 32)})
        assert changed and len(res.new) == len(df) - 5
        # the same bytes as a run that never failed
        clean = LocalStore(tmp_path / "clean")
        ingest_and_refresh(src, clean, accepted_sizes={(32, 32)})
        assert (dest.root / "manifest.csv").read_bytes() == (clean.root / "manifest.csv").read_bytes()


def test_splits_hold_70_15_15_for_plates_of_any_thickness():
    """Continuous thicknesses made every alloy x value stratum a singleton, and val got 1.2 %: strata are
    now thickness bins, and every class's val and test plates spread over them."""
    rng = np.random.default_rng(0)
    rows = [
        {
            "plate_id": f"p{i}",
            "capture_id": f"c{i}",
            "alloy": a,
            "nominal_thickness_mm": float(rng.uniform(1, 5)),
            "labelled": True,
        }
        for i, a in enumerate(np.repeat(CLASS_NAMES, 60))
    ]
    df = assign_splits(pd.DataFrame(rows), seed=0)
    share = df.split.value_counts(normalize=True)
    assert abs(share["val"] - 0.15) < 0.02 and abs(share["test"] - 0.15) < 0.02
    for _, g in df.groupby("alloy"):
        for split in ("val", "test"):
            t = g[g.split == split].nominal_thickness_mm
            assert t.min() < 2.0 and t.max() > 4.0  # spread over the range, not bunched
    # the few-nominal-values case keeps the values themselves as strata
    from alloynet.data.manifest import thickness_strata

    assert thickness_strata(pd.Series([1.0, 2.0, 5.0, 1.0])).tolist() == [1.0, 2.0, 5.0, 1.0]
    assert thickness_strata(pd.Series(np.linspace(1, 5, 40))).nunique() == 4
