"""ResNetClassifier: how a network of the family is trained, evaluated and logged."""

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from resnet_lit.models import build
from resnet_lit.schedules import Schedule, end_warmup, warming_up

ScheduleName = Literal["multistep", "step", "cosine", "onecycle", "constant"]


class ResNetClassifier(LightningModule):
    """A ResNet (or its plain twin) trained for image classification with cross-entropy.

    The defaults are the paper's recipe (He et al. 2016, Sec. 3.4 and 4.2): SGD with momentum
    0.9 and weight decay 1e-4, learning rate 0.1 divided by 10 at 32k and 48k iterations.

    Args:
        arch: the network, by name: resnet18 ... resnet152, resnet20 ... resnet1202, plainN.
        in_channels: input channels; the CLI links it from the data.
        num_classes: classes; the CLI links it from the data.
        image_size: input height and width; the CLI links it from the data (after any resize).
        shortcut: the paper's shortcut option "A", "B" or "C" (Sec. 3.3); None: the family's
            default (B for resnet18..152, A for the 6n+2 nets).
        stem: "imagenet" (7x7/2 conv + max-pool) or "small" (3x3/1 conv, fit for 28x28);
            None: the family's default (imagenet for resnet18..152, small for the 6n+2 nets).
        stride_in_1x1: bottlenecks subsample in their first 1x1 conv, as in the paper (True),
            or in the 3x3 conv, as in torchvision's v1.5 (False).
        zero_init_residual: start each block's last BatchNorm at zero (not in the paper).
        optimizer: "sgd" (the paper's) or "adamw".
        lr: (peak) learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty (decoupled for AdamW).
        schedule: "multistep" (the paper's: multiply by `gamma` at each of `milestones`),
            "step" (every `step_size`), "cosine" (to 0 at the end of training), "onecycle"
            (warm-up to `lr`, then anneal; always per step), or "constant".
        interval: whether `milestones` and `step_size` count "step"s (iterations, as the paper
            does) or "epoch"s.
        milestones: where "multistep" decays, in `interval` units; None: the paper's 32k and 48k.
        gamma: the decay factor of "multistep" and "step".
        step_size: the period of "step", in `interval` units.
        warmup_lr: train at this learning rate until the training error of a batch falls
            below `warmup_until_error`, then go back to the schedule (the paper's ResNet-110
            recipe: 0.01 until below 80%); None: no warm-up.
        warmup_until_error: the training error that ends the warm-up.
        channels_last: keep the network's weights and its input batches in channels-last
            (NHWC) memory format: the same function, faster convolutions (oneDNN on CPUs,
            tensor cores on GPUs; benchmarks/options.py).
        compile: compile the network with `torch.compile` when training or evaluation starts;
            the first steps take longer (compilation), later ones run faster. Checkpoints keep
            plain parameter names, so they load with compile off.
    """

    def __init__(
        self,
        arch: str = "resnet20",
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        shortcut: Literal["A", "B", "C"] | None = None,
        stem: Literal["imagenet", "small"] | None = None,
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-4,
        schedule: ScheduleName = "multistep",
        interval: Literal["step", "epoch"] = "step",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        step_size: int = 30,
        warmup_lr: float | None = None,
        warmup_until_error: float = 0.8,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # He et al. 2016, Sec. 4.2: divide by 10 at 32k and 48k iterations (CIFAR-10, batch 128).
        self.milestones = list(milestones) if milestones is not None else [32_000, 48_000]
        if lr <= 0:
            raise ValueError(f"model.lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"model.weight_decay must be 0 or more, got {weight_decay}")
        if not 0 <= momentum < 1:
            raise ValueError(f"model.momentum must be in [0, 1), got {momentum}")
        if step_size <= 0 or any(m <= 0 for m in self.milestones):
            raise ValueError(f"model.step_size and model.milestones must be positive, got {step_size}, {milestones}")
        if warmup_lr is not None and (warmup_lr <= 0 or schedule == "onecycle"):
            raise ValueError(f"model.warmup_lr must be positive and not combined with onecycle, got {warmup_lr}")
        self.save_hyperparameters()
        self.net = build(
            arch,
            in_channels=in_channels,
            num_classes=num_classes,
            shortcut=shortcut,
            stem=stem,
            stride_in_1x1=stride_in_1x1,
            zero_init_residual=zero_init_residual,
        )
        if channels_last:
            self.net.to(memory_format=torch.channels_last)  # kept through .to(device) and checkpoint loading
        # Lets the model summary print every layer's input and output shape (the shape walk).
        self.example_input_array = torch.zeros(2, in_channels, image_size, image_size)

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints, so a resumed run remembers it

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op where it already is
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets)
        # Log the batch's accuracy (what the metric's forward returns), not the Metric object:
        # that made Lightning's step cost more than 3% over a hand-written loop's
        # (docs/performance.md, benchmarks/framework.py).
        self.train_acc_batch = self.train_acc(logits, targets)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc_batch, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test", self.test_acc)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        images, targets = batch
        probs = self(images).softmax(dim=1)
        confidence, predicted = probs.max(dim=1)
        return {"predicted": predicted, "confidence": confidence, "target": targets}

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        """Loss and accuracy of a batch; returns the logits, which callbacks (resnet_lit.insight) read."""
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets)
        accuracy(logits, targets)
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)
        return logits

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        interval = "step" if hp.schedule == "onecycle" else hp.interval
        scheduler = self._scheduler(optimizer, interval)
        # The name is the learning rate's TensorBoard tag (LearningRateMonitor).
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval, "name": "lr"}}

    def _scheduler(self, optimizer: torch.optim.Optimizer, interval: str) -> LRScheduler:
        hp = self.hparams
        total = None
        if hp.schedule in ("cosine", "onecycle"):
            total = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
            if total is None or total <= 0 or math.isinf(total):
                raise ValueError(f"schedule {hp.schedule!r} needs a finite trainer.max_epochs or trainer.max_steps")
        if hp.schedule == "onecycle":
            return OneCycleLR(optimizer, max_lr=hp.lr, total_steps=int(total))
        warmup_factor = hp.warmup_lr / hp.lr if hp.warmup_lr is not None else None
        schedule = Schedule(hp.schedule, self.milestones, hp.gamma, hp.step_size, total, warmup_factor)
        return LambdaLR(optimizer, schedule)

    def configure_model(self) -> None:
        # Lightning calls this before every fit/validate/test/predict, before the move to the device.
        if self.hparams.compile and not getattr(self.net, "_compiled_call_impl", None):
            # nn.Module.compile compiles the module in place, so its state_dict keys stay as they are
            # (torch.compile(net) would wrap it and prefix every key with "_orig_mod.").
            # dynamic=False: one static graph per batch shape (training, evaluation, a last partial batch).
            self.net.compile(dynamic=False)

    def on_train_batch_end(self, outputs: Any, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        scheduler = self.lr_schedulers()
        if warming_up(scheduler):
            error = 1 - self.train_acc_batch
            error = self.trainer.strategy.reduce(error, reduce_op="mean")  # every process ends it together
            if error < self.hparams.warmup_until_error:
                end_warmup(scheduler)
                self.print(f"warm-up ended at step {self.global_step}: training error {error:.3f}")

    def on_train_epoch_end(self) -> None:
        self.train_acc.reset()  # only its per-batch values are logged

    def on_validation_epoch_end(self) -> None:
        # The best val/acc so far, as TensorBoard's hparams view metric ("hp_metric").
        if not self.trainer.sanity_checking:
            self.val_acc_best(self.val_acc.compute())
            self.log("hp_metric", self.val_acc_best.compute())
