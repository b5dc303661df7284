"""Training configuration: precedence of YAML, flags and --set; validation; resume; the CLI's errors."""

import pytest
import yaml

from training.config import ConfigError, load_config, parse_override, save_config
from training.train_cli import build_parser, cli, config_from_args


def test_config_precedence_yaml_then_flags_then_set(tmp_path):
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump({"train": {"seed": 5, "bits": [32, 8]}, "distill": {"alpha": 0.1}})
    )
    args = build_parser().parse_args(
        [
            "--config",
            str(tmp_path / "run.yaml"),
            "--data",
            "/d",
            "--bits",
            "32,4",
            "--set",
            "distill.alpha=0.7",
            "--set",
            "quant.lr=1e-3",
            "--epochs",
            "4",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.train.seed == 5  # from the file
    assert cfg.train.bits == [32, 4]  # the flag beats the file
    assert cfg.distill.alpha == 0.7 and cfg.quant.lr == 0.001  # --set beats both; "1e-3" is a number
    assert cfg.train.schedule == "DQDQ"  # the paper's pattern scaled to 4 epochs
    assert cfg.data.root == "/d"


@pytest.mark.parametrize(
    "override,message",
    [
        ("distill.alhpa=0.5", "unknown config key 'distill.alhpa'; known keys here: alpha, width_match"),
        ("model.depth=3", "unknown config key 'model'; known keys here: data, student"),
        ("data.batch_size=big", "data.batch_size: Input should be a valid integer"),
        ("data.batch_size=0", "data.batch_size: Input should be greater than or equal to 1"),
        ("distill.alpha=1.5", "distill.alpha: Input should be less than or equal to 1"),
        ("train.strategy=best", "train.strategy: Input should be 'finetune', 'distill', 'qad' or 'mct'"),
        ("train.bits=[12]", r"train.bits: \[12\] not supported; choose from \[1, 2,"),
        ("train.bits=[4, 4]", "train.bits: duplicates in"),
        ("train.bits=[]", "train.bits: List should have at least 1 item"),
        ("student.init=imagenet", "student.init: student.init must be random, whisper:<path> or teacher-layers"),
        ("data.on_error=ignore", "data.on_error: Input should be 'skip' or 'raise'"),
    ],
)
def test_config_refuses_unknown_keys_and_bad_values_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [parse_override(override)])


def test_an_override_must_name_section_and_key():
    with pytest.raises(ConfigError, match="section.key"):
        parse_override("alpha=0.5")


def test_a_config_file_s_errors_name_the_file(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  seed: many\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: train\.seed: Input should be a valid integer"):
        load_config(tmp_path / "run.yaml")


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, [parse_override("train.bits=[16, 2]"), parse_override("data.root=/x")])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "updates,message",
    [
        ({"train": {"strategy": "distill", "bits": [32, 4]}}, "use --strategy qad"),
        ({"train": {"strategy": "mct", "bits": [4]}, "teacher": {"path": ""}}, "give --teacher"),
        ({"train": {"schedule": "DDQD"}}, "last letter must be Q"),
        (
            {
                "student": {"init": "teacher-layers"},
                "teacher": {"path": ""},
                "train": {"strategy": "finetune", "bits": [32]},
            },
            "copies layers of the teacher",
        ),
    ],
)
def test_rules_across_fields_explain_the_problem(updates, message):
    base = {"data": {"root": "/d"}, "teacher": {"path": "/t.pt"}}
    cfg = load_config(None, [base, updates])
    with pytest.raises(ConfigError, match=message):
        cfg.check()


def test_resume_uses_the_saved_config_and_refuses_changes(tmp_path):
    saved = load_config(None, [{"data": {"root": "/d"}, "train": {"out": str(tmp_path), "seed": 3, "bits": [32, 4]}}])
    save_config(saved, tmp_path / "config.yaml")
    resumed = config_from_args(build_parser().parse_args(["--out", str(tmp_path), "--resume", "--threads", "1"]))
    assert resumed.train.seed == 3 and resumed.train.bits == [32, 4] and resumed.train.threads == 1
    with pytest.raises(ConfigError, match="train.seed"):
        config_from_args(build_parser().parse_args(["--out", str(tmp_path), "--resume", "--seed", "4"]))


def test_cli_reports_a_bad_configuration_as_an_error(capsys):
    assert cli(["--data", "/d", "--teacher", "t.pt", "--strategy", "distill", "--bits", "32,4"]) == 2
    assert "use --strategy qad" in capsys.readouterr().err
