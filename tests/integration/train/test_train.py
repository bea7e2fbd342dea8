"""The trainer and the evaluation report end to end on a tiny simulated store (32x32 captures, 1-3 epochs)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from typer.testing import CliRunner

from alloynet.cli import app
from alloynet.models import list_models
from alloynet.models.checkpoint import load_checkpoint, load_model
from alloynet.train import load_config, train
from tests.helpers import ROOT
from tests.helpers.dummy import DummyCaptureStore
from tests.unit.train.test_train import _profile

REQUIRED_METRICS = {
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "per_class",
    "thickness_mae_mm",
    "a0_mae",
    "ceiling_accuracy",
    "ceiling_heavy_light",
    "heavy_light_balanced_accuracy",
    "ece",
    "ece_uncalibrated",
    "set_coverage",
    "set_size_mean",
    "flag_rates",
    "baselines",
}
TIMING = ("train_images_per_s", "train_seconds")


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("captures")
    with DummyCaptureStore(n_max=8, size=32, imbalance_ratio=4.0, root=root):
        yield root


def _cfg(store_dir, out, **over):
    base = {
        "data.store": str(store_dir),
        "out_dir": str(out),
        "epochs": 2,
        "progress": False,
        "data.batch_size": 8,
        "model.name": "profile_cnn",
        "model.kwargs": {"widths": [8, 16]},
    }
    return load_config(None, {**base, **over})


def _same_history(a: list[dict], b: list[dict]) -> bool:
    strip = [{k: v for k, v in h.items() if k not in TIMING} for h in (a + b)]
    return strip[: len(a)] == strip[len(a) :]


# make test trains one architecture; the other six run in the slow tier (make test-slow)
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("resnet18", marks=pytest.mark.slow),
        pytest.param("resnet34", marks=pytest.mark.slow),
        pytest.param("resnet50", marks=pytest.mark.slow),
        pytest.param("vgg16", marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", marks=pytest.mark.slow),
        pytest.param("fnn", marks=pytest.mark.slow),
        "profile_cnn",
    ],
)
def test_cli_train_and_evaluate_every_architecture(name, store_dir, tmp_path):
    assert name in list_models()
    run = tmp_path / name
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--store",
            str(store_dir),
            "--model",
            name,
            "--epochs",
            "1",
            "--out",
            str(run),
            "--set",
            "data.batch_size=8",
            "--set",
            "progress=false",
        ],
    )
    assert res.exit_code == 0, res.output
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        resolved["optim"]["name"] is not None and resolved["model"]["activation"] is not None
    )  # table defaults filled
    res = CliRunner().invoke(app, ["evaluate", str(run / "best.pt"), "--out", str(run / "report"), "--gradcam", "2"])
    assert res.exit_code == 0, res.output
    assert "physics bracket" in res.output
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert REQUIRED_METRICS <= set(metrics) and metrics["model"] == name
    assert set(metrics["per_class"]["Al7075"]) >= {"precision", "recall", "f1", "specificity"}
    assert 0 < metrics["ceiling_accuracy"] <= 1
    assert metrics["ceiling_gap"] == pytest.approx(metrics["ceiling_accuracy"] - metrics["balanced_accuracy"])
    assert metrics["ceiling_lower"] == metrics["ceiling_accuracy"] and metrics["ceiling_upper_se"] > 0
    assert set(metrics["baselines"]) == {"physics_fit", "gaussian_profile"}
    assert 0 <= metrics["baselines"]["physics_fit"]["balanced_accuracy"] <= 1
    assert 1 <= metrics["set_size_mean"] <= 5 and 0 <= metrics["set_coverage"] <= 1
    term = metrics["physics_term"]  # every architecture has the physics term by default
    assert term["weight"] == pytest.approx(float(load_checkpoint(run / "best.pt")["model"]["physics.weight"]))
    assert 0 <= term["changed"] <= 1 and 0 <= term["trunk_alone"] <= 1
    pngs = {p.name for p in (run / "report" / "plots").glob("*.png")}
    assert pngs == {
        "confusion.png",
        "confusion_normalised.png",
        "roc.png",
        "pr.png",
        "learning_curves.png",
        "thickness_scatter.png",
    }
    assert len(list((run / "report" / "gradcam").glob("*.png"))) == 2
    report = (run / "report" / "report.md").read_text()
    assert "physics bracket" in report and "upper edge" in report and "](plots/confusion.png)" in report
    assert "physics fit (baseline)" in report and "Conformal prediction sets" in report
    assert "## The physics term" in report


def test_checkpoint_is_a_plain_dict_and_rebuilds_the_model(store_dir, tmp_path):
    result = train(_cfg(store_dir, tmp_path / "run", **{"model.name": "fnn", "model.kwargs": {}}))
    raw = torch.load(result.last_checkpoint, weights_only=True)  # plain dict: no pickled classes
    assert {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "config",
        "class_names",
        "manifest_hash",
        "image_size",
        "model_spec",
    } <= set(raw)
    assert raw["image_size"] == [32, 32] and raw["channels"] == 1 and raw["epoch"] == 2
    model, meta = load_model(result.checkpoint)
    assert meta["class_names"] == ["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"]
    assert meta["manifest_hash"] == result.manifest_hash and not model.training
    best = load_checkpoint(result.checkpoint)
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())  # exact weights
    out = model(torch.full((2, 1, 32, 32), 20_000.0), model.preprocess.reference_levels(2), torch.full((2, 1), 50.0))
    assert out["logits"].shape == (2, 5)
    # the honest answers were fitted on the validation split when training ended
    assert (
        "answer" in best
        and 0.05 < float(model.answer.temperature) < 20
        and best["answer"]["coverage"] == pytest.approx(0.95)
    )
    assert float(model.answer.ood_threshold) < float("inf") and model.answer.thickness_range[1] < 10


def test_same_seed_same_metrics_and_weights(store_dir, tmp_path):
    a = train(_cfg(store_dir, tmp_path / "a"))  # with augmentation and shuffling: both keyed by the seed
    b = train(_cfg(store_dir, tmp_path / "b"))
    c = train(_cfg(store_dir, tmp_path / "c", seed=1))
    assert _same_history(a.history, b.history)
    wa, wb = load_checkpoint(a.last_checkpoint)["model"], load_checkpoint(b.last_checkpoint)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not _same_history(a.history, c.history)


def test_resume_after_kill_matches_uninterrupted_run(store_dir, tmp_path):
    over = {
        "epochs": 3,
        "schedule.name": "step",
        "schedule.step_size": 1,
        "schedule.gamma": 0.5,
        "schedule.warmup_epochs": 0.5,
        "early_stop.patience": None,
    }
    full = train(_cfg(store_dir, tmp_path / "full", **over))
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # same reduction order as the uninterrupted run
        sys.path.insert(0, {str(ROOT)!r})
        from alloynet.train import load_config, train
        def die(epoch, state):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a real kill
        train(load_config({str(tmp_path / "cfg.yaml")!r}), on_epoch_end=die)
    """)
    cfg = _cfg(store_dir, killed, **over)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(killed / "last.pt")["epoch"] == 2
    resumed = train(cfg, resume=True)
    assert resumed.epochs_run == 3 and _same_history(full.history, resumed.history)
    wf, wr = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    # Learned weights and statistics bit for bit. The physics term's tables are not learned: each process
    # computes them from the forward model (numpy, float64 -> float32), and an entry near 0 can differ in its
    # last bit between two processes (seen: 9e-13 on one entry, about one run in three): equal to 1e-6.
    tables = {k for k in wf["model"] if k.startswith("physics.") and k != "physics.weight"}
    assert tables and all(
        torch.allclose(wf["model"][k].double(), wr["model"][k].double(), rtol=1e-6, atol=1e-9) for k in tables
    )
    assert all(torch.equal(wf["model"][k], wr["model"][k]) for k in wf["model"] if k not in tables)
    assert wf["optimizer"]["param_groups"][0]["lr"] == wr["optimizer"]["param_groups"][0]["lr"]


def test_resume_refuses_a_different_recipe(store_dir, tmp_path):
    train(_cfg(store_dir, tmp_path / "r", epochs=1))
    with pytest.raises(ValueError, match="optim"):
        train(_cfg(store_dir, tmp_path / "r", epochs=2, **{"optim.lr": 0.5}), resume=True)
    more = train(_cfg(store_dir, tmp_path / "r", epochs=2), resume=True)  # more epochs is fine
    assert more.epochs_run == 2


def test_early_stopping_and_losses_options(store_dir, tmp_path):
    # No epoch can beat the first by more than min_delta (balanced accuracy moves by at most 1), so patience 1
    # stops after epoch 2 of 5. (lr ~ 0 alone did not do it: BatchNorm's running statistics still move, and with
    # them a 5-capture validation split's balanced accuracy.)
    r = train(
        _cfg(
            store_dir,
            tmp_path / "es",
            epochs=5,
            **{
                "optim.lr": 1e-12,
                "early_stop.patience": 1,
                "early_stop.min_delta": 1.0,
                "loss.name": "ldam",
                "loss.kwargs": {"drw_epoch": 1},
                "loss.weighting": "uncertainty",
                "data.sampler": "class_balanced",
                "schedule.name": "plateau",
            },
        )
    )
    assert r.stopped_early and r.epochs_run == 2 and r.best_epoch == 1
    assert "log_vars.alloy" in load_checkpoint(r.last_checkpoint)["loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_amp_channels_last(store_dir, tmp_path):
    r = train(
        _cfg(
            store_dir,
            tmp_path / "gpu",
            epochs=1,
            device="cuda",
            amp=True,
            channels_last=True,
            deterministic=True,
            **{"model.name": "resnet18", "model.kwargs": {}},
        )
    )
    assert math.isfinite(r.metrics["loss"])
    model, _ = load_model(r.checkpoint, device="cuda")
    calibration = model.preprocess.reference_levels(2).cuda()
    out = model(
        torch.full((2, 1, 32, 32), 20_000.0, device="cuda"), calibration, torch.full((2, 1), 50.0, device="cuda")
    )
    assert out["logits"].shape == (2, 5)


@pytest.mark.slow
def test_ddp_torchrun_on_cpu_gloo(store_dir, tmp_path):
    """The distributed path end to end on CPU (gloo), learnt task weights included: same code as on GPUs."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "alloynet.cli",
        "train",
        "--store",
        str(store_dir),
        "--model",
        "profile_cnn",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--set",
        "progress=false",
        "--set",
        "data.batch_size=4",
        "--set",
        "loss.weighting=uncertainty",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best epoch") == 1  # only rank 0 reports
    ckpt = load_checkpoint(out / "last.pt")
    weights = {k: v for k, v in ckpt["model"].items() if v.is_floating_point() and not k.startswith("answer.")}
    assert (
        ckpt["epoch"] == 1 and weights and all(torch.isfinite(v).all() for v in weights.values())
    )  # answer.* may be inf


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices for DDP")
def test_ddp_torchrun(store_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "alloynet.cli",
        "train",
        "--store",
        str(store_dir),
        "--model",
        "resnet18",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--device",
        "cuda",
        "--set",
        "progress=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_robustness_suite_runs_each_case_against_its_own_ceiling(store_dir, tmp_path):
    """The suite's mechanics on a tiny model: each case simulates its own test set from the model's rig with
    one thing changed, and the report says what changed (accuracy itself is measured in bench/)."""
    from alloynet.evaluate.robustness import run_suite

    result = train(_cfg(store_dir, tmp_path / "run", **{"model.name": "profile_mlp", "model.kwargs": {}}))
    rows = run_suite(
        result.checkpoint,
        tmp_path / "rb",
        cases=["unseen_thickness", "drift_3pct_no_calibration", "second_rig"],
        plates_per_class=2,
        with_ceiling=False,
    )
    by = {r["case"]: r for r in rows}
    assert set(by) == {"unseen_thickness", "drift_3pct_no_calibration", "second_rig"} and all(
        r["n"] == 10 for r in rows
    )
    out_of_envelope = by["unseen_thickness"]["flags"]  # 5.5-7 mm plates for a model trained on 1-5 mm: said
    assert (
        max(out_of_envelope.get("thickness_out_of_range", 0), out_of_envelope.get("profile_unlike_training", 0)) > 0.5
    )
    assert by["drift_3pct_no_calibration"]["flags"]["calibration_missing"] == 1.0
    assert "calibration_missing" not in by["second_rig"]["flags"]
    from alloynet.data.manifest import read_manifest

    source = read_manifest(tmp_path / "rb" / "second_rig" / "data" / "manifest.csv")
    assert (tmp_path / "rb" / "robustness.md").exists() and len(source) == 10


def test_pretrain_then_finetune_starts_from_the_pretrained_weights(store_dir, tmp_path):
    prof = _profile(tmp_path / "rig.yaml")
    pre = {
        "synthetic": {"captures": 40, "rig_profile": str(prof), "rig_variants": 2, "session_size": 10},
        "epochs": 1,
        "lr_factor": 1e-9,
    }
    r = train(_cfg(store_dir, tmp_path / "run", **{"pretrain": pre, "epochs": 1}))
    pre_ckpt = tmp_path / "run" / "pretrain" / "best.pt"
    pre_cfg = yaml.safe_load((tmp_path / "run" / "pretrain" / "config.yaml").read_text())
    assert pre_cfg["data"]["synthetic_only"] and pre_cfg["data"]["synthetic"]["rig_profile"] == str(prof)
    assert pre_cfg["pretrain"] is None
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["model"]["init_from"] == str(pre_ckpt) and cfg["pretrain"]["epochs"] == 1
    assert cfg["optim"]["lr"] == pytest.approx(pre_cfg["optim"]["lr"] * 1e-9)
    # the pretraining saw simulated captures only: as many as asked, every class
    pre_counts = load_checkpoint(pre_ckpt)["class_counts"]
    assert sum(pre_counts) == 40 and min(pre_counts) == 8
    # at a vanishing fine-tuning lr the learned weights are the pretrained ones (preprocessing and answers are
    # the run's own)
    pretrained, tuned = load_checkpoint(pre_ckpt)["model"], load_checkpoint(r.checkpoint)["model"]
    model, _ = load_model(r.checkpoint)
    learned = [k for k, _ in model.named_parameters() if not k.startswith("answer.")]
    assert learned and all(torch.allclose(pretrained[k], tuned[k], atol=1e-5) for k in learned)
    # and a run from scratch does not end there
    scratch = load_checkpoint(train(_cfg(store_dir, tmp_path / "scratch", epochs=1)).checkpoint)["model"]
    assert not all(torch.allclose(pretrained[k], scratch[k], atol=1e-5) for k in learned)


@pytest.mark.slow  # two trainings to read one error message: the slow tier
def test_init_from_refuses_another_architecture_naming_the_tensor(store_dir, tmp_path):
    from alloynet.models.checkpoint import load_weights

    other = train(_cfg(store_dir, tmp_path / "wide", **{"epochs": 1, "model.kwargs": {"widths": [8, 32]}}))
    model, _ = load_model(train(_cfg(store_dir, tmp_path / "narrow", epochs=1)).checkpoint)
    with pytest.raises(ValueError, match=r"other shapes \(trunk\..*same architecture"):
        load_weights(model, other.checkpoint)
    with pytest.raises(ValueError, match="synthetic_only: needs simulated captures"):
        train(_cfg(store_dir, tmp_path / "none", **{"data.synthetic_only": True}))


def test_answers_calibrated_on_held_out_simulated_captures_when_training_mixes_some_in(
    store_dir, tmp_path, monkeypatch
):
    import alloynet.train.trainer as trainer

    monkeypatch.setattr(trainer, "MIN_REAL", 1)  # the tiny store's calibration split has a handful of captures
    r = train(
        _cfg(store_dir, tmp_path / "run", epochs=1, **{"data.synthetic": {"captures": 20}, "answer.simulated": 30})
    )
    used = load_checkpoint(r.checkpoint)["answer"]["calibration_set"]
    assert used["real"] >= 1 and 0 <= used["real_coverage"] <= 1 and 0 <= used["agreement_p"] <= 1
    assert used["simulated"] in (0, 30) and (used["simulated"] == 30) == (used["agreement_p"] >= 0.05)
    plain = train(_cfg(store_dir, tmp_path / "plain", epochs=1))
    assert load_checkpoint(plain.checkpoint)["answer"]["calibration_set"]["simulated"] == 0
