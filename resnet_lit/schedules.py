"""Learning-rate schedules as closed-form factors of the step (or epoch), with the paper's warm-up.

He et al. 2016, Sec. 4.2: "we use 0.01 to warm up the training until the training error is
below 80% (about 400 iterations), and then go back to 0.1 and continue training" (ResNet-110).
The warm-up ends on an event, not at a fixed step, so it is state of the schedule: `Schedule`
is a callable object, which `LambdaLR` saves in its state dict, so checkpoints keep it.
"""

import math
from bisect import bisect_right
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from resnet_lit.errors import BadInput

Kind = Literal["multistep", "step", "cosine", "constant"]


class Schedule:
    """The factor by which the base learning rate is multiplied at step (or epoch) `t`.

    Args:
        kind: "multistep" (`gamma` at each milestone, the paper's), "step" (`gamma` every
            `step_size`), "cosine" (from 1 to 0 over `total`), or "constant".
        milestones: for "multistep", in steps or epochs.
        gamma: decay factor of "multistep" and "step".
        step_size: period of "step".
        total: length of training, for "cosine".
        warmup_factor: while warming up, the factor is this instead (0.1 turns the paper's
            lr 0.1 into its warm-up lr 0.01); None: no warm-up.
        ramp: a linear warm-up over the first `ramp` steps (or epochs): the factor is multiplied
            by (t + 1) / ramp until then (Goyal et al. 2017, for large batches); 0: none.
    """

    def __init__(
        self,
        kind: Kind,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        step_size: int = 1,
        total: int | None = None,
        warmup_factor: float | None = None,
        ramp: int = 0,
    ) -> None:
        if kind == "cosine" and not total:
            raise BadInput("a cosine schedule needs the length of training (max_steps or max_epochs)")
        self.kind = kind
        self.milestones = sorted(milestones or [])
        self.gamma = gamma
        self.step_size = step_size
        self.total = total
        self.warmup_factor = warmup_factor
        self.warming_up = warmup_factor is not None
        self.ramp = ramp

    def end_warmup(self) -> None:
        self.warming_up = False

    def __call__(self, t: int) -> float:
        if self.warming_up:
            return self.warmup_factor
        return self._decay(t) * (min(1.0, (t + 1) / self.ramp) if self.ramp else 1.0)

    def _decay(self, t: int) -> float:
        if self.kind == "multistep":
            return self.gamma ** bisect_right(self.milestones, t)
        if self.kind == "step":
            return self.gamma ** (t // self.step_size)
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, self.total) / self.total))
        return 1.0


def end_warmup(scheduler: LambdaLR) -> None:
    """End the warm-up now: the optimizer's next step already uses the scheduled learning rate."""
    for schedule in scheduler.lr_lambdas:
        schedule.end_warmup()
    factors = [schedule(scheduler.last_epoch) for schedule in scheduler.lr_lambdas]
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, factors, strict=True):
        group["lr"] = base_lr * factor


def warming_up(scheduler: torch.optim.lr_scheduler.LRScheduler) -> bool:
    return isinstance(scheduler, LambdaLR) and any(getattr(s, "warming_up", False) for s in scheduler.lr_lambdas)
