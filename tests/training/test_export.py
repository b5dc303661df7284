"""Which files a run writes: the post-hoc rule (``train.post_hoc_bits``) in one place."""

import pytest

from training.config import Config, ConfigError
from training.export import exported_paths, post_hoc_widths
from training.schedule import make_plan


def config(strategy: str, bits: list[int], post_hoc: list[int]) -> Config:
    return Config.model_validate(
        {
            "data": {"root": "corpus"},
            "teacher": {"path": "teacher.pt"},
            "train": {"strategy": strategy, "bits": bits, "schedule": "DQ", "post_hoc_bits": post_hoc, "out": "o"},
        }
    )


@pytest.mark.parametrize("float_bits", [32, 16])
def test_the_float_branch_writes_post_hoc_copies_whether_it_exports_32_or_16_bits(float_bits):
    cfg = config("mct", [float_bits, 4], [2])
    cfg.check()
    plan = make_plan("mct", "DQ", [float_bits, 4])
    names = [p.name for p in exported_paths(cfg, plan)]
    assert names == [
        f"quads-fsc-{float_bits}bit.safetensors",
        "quads-fsc-ptq-2bit.safetensors",
        "quads-fsc-4bit.safetensors",
    ]
    assert [post_hoc_widths(cfg, b) for b in plan.branches] == [[], [2], []]  # shared, float, 4-bit


def test_post_hoc_widths_without_a_float_branch_are_refused():
    with pytest.raises(ConfigError, match="32 or 16"):
        config("mct", [4], [2]).check()
    with pytest.raises(ConfigError, match="float branch"):
        config("qad", [32, 4], [2]).check()
