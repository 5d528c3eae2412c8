"""The learning-rate schedules, checked on the scheduler itself."""

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from resnet_lit.schedules import Schedule, end_warmup, warming_up


def sgd(lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def lrs(scheduler: LambdaLR, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_multistep_divides_by_10_at_the_papers_milestones():
    scheduler = LambdaLR(opt := sgd(), Schedule("multistep", [32_000, 48_000]))
    seen = lrs(scheduler, 3)
    assert seen == pytest.approx([0.1] * 3)
    for t, lr in ((31_999, 0.1), (32_000, 0.01), (47_999, 0.01), (48_000, 0.001), (63_999, 0.001)):
        scheduler.last_epoch = t - 1
        scheduler.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)


def test_step_cosine_and_constant():
    assert [Schedule("step", gamma=0.5, step_size=2)(t) for t in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    cosine = Schedule("cosine", total=100)
    assert cosine(0) == 1 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0) == cosine(150)
    assert Schedule("constant")(10**6) == 1
    with pytest.raises(ValueError, match="cosine schedule needs"):
        Schedule("cosine")


def test_warmup_holds_until_ended_then_returns_to_the_schedule():
    """ResNet-110 (Sec. 4.2): 0.01 until training error < 80%, then back to 0.1, then the decays."""
    opt = sgd()
    scheduler = LambdaLR(opt, Schedule("multistep", [1000, 1500], warmup_factor=0.1))
    assert warming_up(scheduler)
    assert lrs(scheduler, 400) == pytest.approx([0.01] * 400)
    end_warmup(scheduler)
    assert not warming_up(scheduler)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # at once, not at the next decay
    seen = lrs(scheduler, 1200)  # steps 400 .. 1599
    assert seen[599] == pytest.approx(0.1) and seen[600] == pytest.approx(0.01) and seen[1100] == pytest.approx(0.001)


def test_warmup_state_survives_a_checkpoint(tmp_path):
    scheduler = LambdaLR(sgd(), Schedule("multistep", [1000], warmup_factor=0.1))
    lrs(scheduler, 10)
    end_warmup(scheduler)
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    state = torch.load(tmp_path / "scheduler.pt", weights_only=True)  # as checkpoints load
    restored = LambdaLR(opt := sgd(), Schedule("multistep", [1000], warmup_factor=0.1))
    restored.load_state_dict(state)
    assert not warming_up(restored)
    restored.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_a_linear_ramp_scales_the_first_steps_then_leaves_the_schedule():
    cosine = Schedule("cosine", total=100, ramp=4)
    assert [cosine(t) for t in range(4)] == pytest.approx(
        [0.25 * (t + 1) * Schedule("cosine", total=100)(t) for t in range(4)]
    )
    assert cosine(4) == Schedule("cosine", total=100)(4)
    assert [Schedule("multistep", [3], ramp=2)(t) for t in range(5)] == pytest.approx([0.5, 1, 1, 0.1, 0.1])
