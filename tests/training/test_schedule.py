"""The epoch plan (``training.schedule``) and the learning-rate schedule."""

import pytest

from training.config import PAPER_SCHEDULE
from training.loop import (
    cosine_lr,
)
from training.schedule import make_plan, parse_pattern, runs, scale_pattern


def test_paper_schedule_phases():
    assert runs(PAPER_SCHEDULE) == [("D", 3), ("Q", 3), ("D", 6), ("Q", 8)]
    assert scale_pattern(PAPER_SCHEDULE, 20) == PAPER_SCHEDULE
    assert scale_pattern(PAPER_SCHEDULE, 4) == "DQDQ"
    assert scale_pattern(PAPER_SCHEDULE, 10) == "DDQQDDDQQQ"  # 3:3:6:8 -> 2:2:3:3 (each phase >= 1)
    assert scale_pattern(PAPER_SCHEDULE, 2) == "DQ"
    with pytest.raises(ValueError, match="only D"):
        parse_pattern("DDX")


def test_mct_plan_shares_the_leading_distillation_and_branches_per_width():
    plan = make_plan("mct", "DDQQDQ", [32, 16, 8, 4])
    names = [b.name for b in plan.branches]
    assert names == ["shared", "float", "8bit", "4bit"]
    shared, floats, b8, b4 = plan.branches
    assert shared.letters == "DD" and shared.exports == ()
    assert floats.exports == (32, 16) and floats.train_bits == 32 and floats.letters == "FFDF"
    assert b4.train_bits == 4 and b4.exports == (4,) and b4.first_epoch == 2
    epochs = plan.epochs
    assert len(epochs) == 2 + 3 * 4
    q_phase = [e for e in epochs if e.branch == 3 and e.kind == "Q"][:2]
    assert [(e.index, e.phase_start, e.phase_epochs, e.epoch_in_phase) for e in q_phase] == [(2, 2, 2, 0), (3, 2, 2, 1)]


def test_qad_and_finetune_plans():
    qad = make_plan("qad", "DDQ", [32, 8, 4])
    assert len(qad.branches) == 1 and qad.branches[0].letters == "DDD" and qad.branches[0].exports == (32, 8, 4)
    ft = make_plan("finetune", "DQ", [32])
    assert ft.branches[0].letters == "FF"
    with pytest.raises(ValueError):
        make_plan("distill", "DQ", [4])


def test_cosine_schedule_decays_to_zero():
    assert cosine_lr(0.01, 0, 10) == pytest.approx(0.01)
    assert cosine_lr(0.01, 5, 10) == pytest.approx(0.005)
    assert cosine_lr(0.01, 10, 10) == pytest.approx(0.0, abs=1e-12)
