"""ResNetClassifier: how a network of the family is trained, evaluated and logged."""

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from resnet_lit import compat
from resnet_lit.errors import BadInput
from resnet_lit.models import build
from resnet_lit.schedules import Schedule, end_warmup, warming_up
from resnet_lit.weights import init_weights as weights_into

ScheduleName = Literal["multistep", "step", "cosine", "onecycle", "constant"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


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
        warmup_steps: a linear warm-up from 0 to the schedule's learning rate over the first
            `warmup_steps` steps (or epochs, with `interval` "epoch"), as Goyal et al. (2017)
            do for large batches; 0: none. Not with "onecycle", which warms up by itself.
        init_weights: weights to start from, loaded when `fit` starts a new run (not when it
            resumes) or when an evaluation runs without a checkpoint (`--ckpt_path untrained`): a
            torchvision weights name (`ResNet18_Weights.IMAGENET1K_V1`), a checkpoint of this
            project, or a checkpoint of akamaster/pytorch_resnet_cifar10; what had to be adapted
            is printed (resnet_lit.weights). None: He et al.'s initialisation.
        label_smoothing: the training loss's target puts this much of its mass on the other
            classes evenly (Szegedy et al. 2016); 0: plain cross-entropy. Evaluation losses are
            always plain cross-entropy, so they compare across runs.
        ema_decay: also keep an exponential moving average of the weights (and BatchNorm
            statistics), updated after every step on the device, and evaluate and predict with
            it; the decay warms up as min(ema_decay, (1 + t) / (10 + t)). None: no average.
        tta: test-time augmentation for validate, test and predict: average the softmax of each
            image and of its mirror image (the training flip).
        channels_last: keep the network's weights and its input batches in channels-last
            (NHWC) memory format: the same function, faster convolutions (oneDNN on CPUs,
            tensor cores on GPUs; benchmarks/options.py).
        compile: compile the network with `torch.compile` when training or evaluation starts;
            the first steps take longer (compilation), later ones run faster. Checkpoints keep
            plain parameter names, so they load with compile off.
        compile_mode: `torch.compile`'s mode, with `compile`. "reduce-overhead" records the
            network's forward and backward passes as CUDA graphs and replays each with one
            launch (on a GPU; elsewhere it compiles as "default"): for small nets whose step is
            bound by kernel launches. Training batches all have one shape (the last partial
            batch is dropped), so one graph serves every step.
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
        warmup_steps: int = 0,
        init_weights: str | None = None,
        label_smoothing: float = 0.0,
        ema_decay: float | None = None,
        tta: bool = False,
        channels_last: bool = True,
        compile: bool = False,
        compile_mode: CompileMode = "default",
    ) -> None:
        super().__init__()
        # He et al. 2016, Sec. 4.2: divide by 10 at 32k and 48k iterations (CIFAR-10, batch 128).
        self.milestones = list(milestones) if milestones is not None else [32_000, 48_000]
        if not (lr > 0 and math.isfinite(lr)):
            raise BadInput(f"model.lr must be positive and finite, got {lr}")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise BadInput(f"model.weight_decay must be 0 or more and finite, got {weight_decay}")
        if not 0 <= momentum < 1:
            raise BadInput(f"model.momentum must be in [0, 1), got {momentum}")
        if not (gamma > 0 and math.isfinite(gamma)):
            raise BadInput(f"model.gamma must be positive and finite, got {gamma}")
        if not (warmup_until_error >= 0 and math.isfinite(warmup_until_error)):
            raise BadInput(f"model.warmup_until_error is a training error, 0 or more, got {warmup_until_error}")
        if step_size <= 0 or any(m <= 0 for m in self.milestones):
            raise BadInput(f"model.step_size and model.milestones must be positive, got {step_size}, {milestones}")
        if warmup_lr is not None and (not (warmup_lr > 0 and math.isfinite(warmup_lr)) or schedule == "onecycle"):
            raise BadInput(f"model.warmup_lr must be positive and not combined with onecycle, got {warmup_lr}")
        if not 0 <= label_smoothing < 1:
            raise BadInput(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise BadInput(f"model.ema_decay must be in (0, 1), got {ema_decay}")
        if warmup_steps < 0 or (warmup_steps and schedule == "onecycle"):
            raise BadInput(f"model.warmup_steps must be 0 or more and not combined with onecycle, got {warmup_steps}")
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
        # The average of the weights, a second copy of the network that no optimizer sees. (torch's
        # AveragedModel would read its step counter on the host every step: a GPU stall.)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False) if ema_decay is not None else None
        # Lets the model summary print every layer's input and output shape (the shape walk).
        self.example_input_array = torch.zeros(2, in_channels, image_size, image_size)

        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # The evaluation losses as metrics too: summed with their image counts over every process
        # under DDP, so they are the mean over every image, exactly as on one process.
        # nan_strategy "disable": its NaN check would read every batch's loss on the host.
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints, so a resumed run remembers it

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op where it already is
        if self.ema_net is not None and not self.training:
            return self.ema_net(x)  # evaluation and prediction use the averaged weights
        return self.net(x)

    def _log_probabilities(self, x: Tensor) -> Tensor:
        """Log-softmax of the batch; with `tta`, the log of its average with the mirror image's.

        Averaged in log space (logaddexp): the log of an averaged softmax would be -inf, and the
        loss inf, wherever both probabilities round to 0 (a confident mistake, logit gap > ~104).
        """
        log_probs = self(x).float().log_softmax(dim=1)
        if self.hparams.tta:
            log_probs = torch.logaddexp(log_probs, self(x.flip(-1)).float().log_softmax(dim=1)) - math.log(2)
        return log_probs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        self._mark_step()
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        # The batch's accuracy as one device tensor: not a logged Metric object (Lightning's bookkeeping
        # for one cost more than 3% of a step, docs/performance.md) and not torchmetrics' forward, whose
        # input checks read values on the host and whose division makes a tensor from host data in
        # some versions (1.7): either is a GPU stall every step.
        self.train_acc_batch = (logits.detach().argmax(dim=1) == targets).float().mean()
        # Not prog_bar=True: Lightning reads every progress-bar value on the host after every
        # batch, a GPU stall each step (Lightning issue #21232). The bar shows these values as
        # they are logged, every `log_every_n_steps` (resnet_lit.callbacks.LoggedValuesProgressBar).
        self.log("train/loss", loss)
        self.log("train/acc", self.train_acc_batch)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test", self.test_acc, self.test_loss)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        images, targets = batch
        self._mark_step()
        confidence, predicted = self._log_probabilities(images).exp().max(dim=1)
        return {"predicted": predicted, "confidence": confidence, "target": targets}

    def _eval_step(
        self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy, mean_loss: MeanMetric
    ) -> Tensor:
        """Loss and accuracy of a batch; returns the logits, which callbacks (resnet_lit.insight) read."""
        images, targets = batch
        self._mark_step()
        # With tta, the log of the averaged probabilities: logits of that average (softmax gives it back).
        logits = self._log_probabilities(images) if self.hparams.tta else self(images)
        mean_loss.update(F.cross_entropy(logits, targets), weight=len(targets))
        accuracy(logits, targets)
        self.log(f"{stage}/loss", mean_loss, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)
        return logits

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # Fused: the whole update in a few kernels, and it can skip a step on the device
        # (`found_inf`, which resnet_lit.callbacks.StopOnNonFiniteLoss sets) without a host sync.
        # The trained network's parameters only: the weight average (`ema_net`) is no optimizer's.
        parameters = list(self.net.parameters())
        fused = _fused_supported(parameters)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                parameters,
                lr=hp.lr,
                momentum=hp.momentum,
                nesterov=hp.nesterov,
                weight_decay=hp.weight_decay,
                fused=fused,
            )
        else:
            optimizer = torch.optim.AdamW(parameters, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
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
                raise BadInput(f"schedule {hp.schedule!r} needs a finite trainer.max_epochs or trainer.max_steps")
        if hp.schedule == "onecycle":
            return OneCycleLR(optimizer, max_lr=hp.lr, total_steps=int(total))
        warmup_factor = hp.warmup_lr / hp.lr if hp.warmup_lr is not None else None
        schedule = Schedule(hp.schedule, self.milestones, hp.gamma, hp.step_size, total, warmup_factor, hp.warmup_steps)
        return LambdaLR(optimizer, schedule)

    def configure_model(self) -> None:
        # Lightning calls this before every fit/validate/test/predict, before the move to the device.
        for net in (self.net, self.ema_net):
            if self.hparams.compile and net is not None and not compat.is_compiled(net):
                # nn.Module.compile compiles the module in place, so its state_dict keys stay as they are
                # (torch.compile(net) would wrap it and prefix every key with "_orig_mod.").
                # dynamic=False: one static graph per batch shape (training, evaluation, a last partial batch).
                net.compile(dynamic=False, mode=self.hparams.compile_mode)

    def _mark_step(self) -> None:
        """Start a new CUDA-graph step: the previous step's graph outputs are done with.

        Every step marks its start, evaluation and prediction too: once training has marked a step,
        cudagraph trees advance only at marks, so unmarked evaluation batches would all be recorded
        as children of the last training step. A training step is one batch: gradient accumulation,
        whose micro-batches leave `.grad` (a graph output) to the next, is refused with CUDA graphs
        (resnet_lit.settings.check_run_settings; pytorch issue 169545).
        """
        if self._graphs:
            torch.compiler.cudagraph_mark_step_begin()

    @property
    def _graphs(self) -> bool:
        """Whether the network runs as CUDA graphs (compiled with mode "reduce-overhead" on a GPU)."""
        return self.hparams.compile and self.hparams.compile_mode == "reduce-overhead" and self.device.type == "cuda"

    def on_train_batch_end(self, outputs: Any, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.ema_net is not None:
            self._update_ema()
        scheduler = self.lr_schedulers()
        # The warm-up's end is looked for at logging steps only, on that step's batch: Lightning
        # reads the logged training accuracy on the host there anyway, and a read every step
        # would stall a GPU every step. It ends up to log_every_n_steps - 1 steps later than a
        # check at every step would end it (the paper's warm-up lasts about 400 iterations).
        every = self.trainer.log_every_n_steps
        if warming_up(scheduler) and not (every and self.global_step % every):
            error = 1 - self.train_acc_batch
            error = self.trainer.strategy.reduce(error, reduce_op="mean")  # every process ends it together
            if error < self.hparams.warmup_until_error:
                end_warmup(scheduler)
                self.print(f"warm-up ended at step {self.global_step}: training error {error:.3f}")

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- ema + (1 - decay) * (weights - ema), for every parameter and floating-point buffer."""
        step = self.global_step  # a host counter: the decay needs no read from the device
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        ema = [*self.ema_net.parameters(), *self.ema_net.buffers()]
        current = [*self.net.parameters(), *self.net.buffers()]
        floats = [(e, c) for e, c in zip(ema, current, strict=True) if e.is_floating_point()]
        get_ema_multi_avg_fn(decay)([e for e, _ in floats], [c for _, c in floats], None)  # one lerp kernel
        for e, c in zip(ema, current, strict=True):
            if not e.is_floating_point():
                e.copy_(c)  # BatchNorm's num_batches_tracked

    def on_fit_start(self) -> None:
        self._load_init_weights()

    def on_validation_start(self) -> None:
        self._load_init_weights()  # validate --ckpt_path untrained --model.init_weights X (in fit: done)

    def on_test_start(self) -> None:
        self._load_init_weights()

    def on_predict_start(self) -> None:
        self._load_init_weights()

    def _load_init_weights(self) -> None:
        """`init_weights` where no checkpoint gives the weights (a new fit, or an untrained evaluation)."""
        if self.trainer.ckpt_path is None:
            self.load_init_weights()

    def load_init_weights(self) -> None:
        """Load `init_weights` into the network now, once (later calls do nothing); says what it adapted.

        The CLI calls it before the run folder is claimed, so weights it refuses leave nothing on
        disk; a Trainer used directly loads them when it starts.

        Raises:
            BadInput: the weights cannot be read, or are not of this network.
        """
        hp = self.hparams
        if hp.init_weights is None or getattr(self, "_initialised", False):
            return
        for line in weights_into(self.net, hp.init_weights, hp.arch, hp.stride_in_1x1):
            rank_zero_only(print)(line)
        if self.ema_net is not None:
            self.ema_net.load_state_dict(self.net.state_dict())  # the average starts from them too
        self._initialised = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The run's length: a resumed run keeps it where the schedule depends on it (resnet_lit.resume).
        trainer = self.trainer
        checkpoint["resnet_lit_run"] = {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it loads the optimizer's state, so an older checkpoint is read as a new one.
        for state in checkpoint.get("optimizer_states", []):
            _drop_average_from_optimizer(state, len(list(self.net.parameters())))

    def on_validation_epoch_end(self) -> None:
        # The best val/acc so far, as TensorBoard's hparams view metric ("hp_metric").
        if not self.trainer.sanity_checking:
            self.val_acc_best(self.val_acc.compute())
            self.log("hp_metric", self.val_acc_best.compute(), sync_dist=True)


# Devices with fused SGD and AdamW kernels in torch >= 2.4 (elsewhere the default foreach ones).
FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _fused_supported(parameters) -> bool:
    return all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in parameters)


def _drop_average_from_optimizer(state: dict[str, Any], trained: int) -> None:
    """Drop the weight average's copies from an optimizer state saved by earlier resnet_lit code.

    Its optimizer held every parameter of the module: the trained network's (the first `trained`),
    then the average's. The average's never had a gradient, so the optimizer kept no state for
    them and never changed them: without them the state is the same run's, and it loads into the
    optimizer that holds the trained network's parameters only. Any other state is left to load
    (or fail) as it is.
    """
    groups = state.get("param_groups") or []
    ids = [i for group in groups for i in group["params"]]
    if len(ids) != 2 * trained or any(i >= trained for i in state.get("state", {})):
        return
    for group in groups:
        group["params"] = [i for i in group["params"] if i < trained]
