"""PBT's options: members take GPUs, checkpoints go to a storage path every node sees, a command line."""

import re

import pytest

from alloynet.study.pbt import PBTConfig, _storage, member_resources, parse_args


def test_members_request_gpus_when_asked():
    assert member_resources(PBTConfig(store="s")) == {"cpu": 1.0}
    assert member_resources(PBTConfig(store="s", cpus_per_member=4, gpus_per_member=0.5)) == {"cpu": 4.0, "gpu": 0.5}
    with pytest.raises(ValueError, match="gpus_per_member"):
        PBTConfig(store="s", gpus_per_member=-1)


def test_checkpoints_stay_on_the_storage_path_and_only_the_local_default_is_removed(tmp_path):
    assert _storage(PBTConfig(store="s"), tmp_path) == (str(tmp_path / "ray"), True)
    assert _storage(PBTConfig(store="s", storage_path="s3://bucket/pbt"), tmp_path) == ("s3://bucket/pbt", False)
    shared = PBTConfig(store="s", storage_path=str(tmp_path / "shared"))
    assert _storage(shared, tmp_path / "out") == (str(tmp_path / "shared"), False)


def test_command_line_builds_the_config_over_a_yaml_file(tmp_path):
    f = tmp_path / "pbt.yaml"
    f.write_text("store: /data/sim\npopulation: 6\nepochs: 3\n")
    cfg = parse_args(
        [
            "--config",
            str(f),
            "--epochs",
            "5",
            "--gpus-per-member",
            "1",
            "--ray-address",
            "auto",
            "--storage-path",
            "/data/pbt",
            "--train",
            "data.batch_size=64",
            "--train",
            "amp=true",
        ]
    )
    assert (cfg.store, cfg.population, cfg.epochs, cfg.gpus_per_member) == ("/data/sim", 6, 5, 1.0)
    assert (cfg.ray_address, cfg.storage_path) == ("auto", "/data/pbt")
    assert cfg.train == {"data.batch_size": 64, "amp": True}


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--store .* is required"),
        (["--store", "s", "--train", "epochs"], "--train 'epochs': expected KEY=VALUE"),
        (["--config", "/nonexistent.yaml"], "no such file"),
    ],
)
def test_command_line_errors_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert re.search(message, capsys.readouterr().err)
