"""What the network learned: per-class accuracy, the confusion matrix and its most confident mistakes.

`Insight` is a callback the CLI adds to every run (`--insight.*`). It reads the logits that
`validation_step` and `test_step` return, keeps its own torchmetrics objects (so their counts sync
across processes under DDP) and at the end of `validate` and `test`

- logs `<stage>/acc_per_class/<class>` scalars to every logger,
- logs the confusion matrix, drawn with its class names and counts, as a TensorBoard image,
- prints a compact per-class table in the terminal,
- and, at test time, a grid of the most confidently misclassified images.

The figures are drawn with PIL (which torchvision already installs) in `resnet_lit.drawing`, so
nothing extra is needed; `render_confusion` and `render_mistakes` are the same functions that write
the PNGs in docs/.
Library alternatives, and why they are not used: `torchvision.utils.make_grid` tiles images but
cannot label them (the true and predicted class under each mistake is the point of the grid);
`TensorBoardLogger(log_graph=True)` traces the network as it runs, and `torch.jit.trace` refuses a
network compiled with `model.compile`, so the graph here is traced eagerly (`compat.eager`).
"""

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from resnet_lit import compat
from resnet_lit.drawing import render_confusion, render_mistakes
from resnet_lit.errors import BadInput


class Insight(Callback):
    """Per-class accuracy, the confusion matrix and the most confident mistakes, at the end of validate and test.

    Args:
        enabled: False turns the whole callback off.
        during_fit: also log the per-class val accuracy and the confusion matrix image after
            every validation epoch of `fit` (no terminal table there).
        misclassified: how many of the most confidently misclassified test images to show in
            the `test/misclassified` grid (0: none).
        graph: add the model's graph to TensorBoard at the start of `fit` (one trace of
            `example_input_array` in eval mode).
        save_png: also write the figures as PNG files into the run's log folder
            (`confusion_val.png`, `confusion_test.png`, `misclassified_test.png`).
    """

    def __init__(
        self,
        enabled: bool = True,
        during_fit: bool = True,
        misclassified: int = 32,
        graph: bool = True,
        save_png: bool = True,
    ) -> None:
        if misclassified < 0:
            raise BadInput(f"insight.misclassified must be 0 or more, got {misclassified}")
        self.enabled = enabled
        self.during_fit = during_fit
        self.misclassified = misclassified
        self.graph = graph
        self.save_png = save_png
        # The last confusion matrix of each stage ("val", "test"), on the CPU, for reading back.
        self.matrices: dict[str, Tensor] = {}
        # The last test's most confident mistakes: confidence, predicted, target, images (model input).
        self.mistakes: dict[str, Tensor] = {}
        self._active = False

    # --- Lightning hooks ----------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled and self.graph and trainer.is_global_zero:
            self._add_graph(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        self._start(trainer, pl_module, active=not trainer.sanity_checking and (self.during_fit or not fitting))

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module, active=True, mistakes=self.misclassified)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._update(outputs, batch)

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active:
            self._report(trainer, pl_module, "val", table=trainer.state.fn != TrainerFn.FITTING)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active:
            self._report(trainer, pl_module, "test", table=True)

    # --- the work -----------------------------------------------------------------------------

    def _start(self, trainer: Trainer, pl_module: LightningModule, active: bool, mistakes: int = 0) -> None:
        self._active = self.enabled and active
        if not self._active:
            return
        self.classes = class_names(trainer, pl_module)
        n = len(self.classes)
        # Fresh metric objects each epoch, on the module's device; compute() syncs them under DDP.
        self.accuracy = MulticlassAccuracy(n, average=None).to(pl_module.device)
        self.confusion = MulticlassConfusionMatrix(n).to(pl_module.device)
        self._mistakes = ConfidentMistakes(mistakes) if mistakes else None

    def _update(self, outputs, batch: tuple[Tensor, Tensor]) -> None:
        if not self._active:
            return
        if not isinstance(outputs, Tensor):
            raise RuntimeError("Insight needs validation_step and test_step to return the logits (B, num_classes)")
        images, targets = batch
        logits = outputs.detach()
        self.accuracy.update(logits, targets)
        self.confusion.update(logits, targets)
        if self._mistakes is not None:
            self._mistakes.update(images, logits, targets)

    def _report(self, trainer: Trainer, pl_module: LightningModule, stage: str, table: bool) -> None:
        accuracy = self.accuracy.compute()  # every process: a collective under DDP
        matrix = self.confusion.compute().cpu()
        for name, value in zip(self.classes, accuracy, strict=True):
            # Equal on every process already; sync_dist only tells Lightning so (no DDP warning).
            pl_module.log(f"{stage}/acc_per_class/{tag_name(name)}", value, sync_dist=True)
        self.matrices[stage] = matrix
        mistakes = self._mistakes.gather(pl_module) if self._mistakes is not None else None
        log_dir = trainer.log_dir  # every process: it broadcasts
        if not trainer.is_global_zero:
            return
        title = f"{stage}: {int(matrix.sum())} images, accuracy {accuracy_of(matrix):.4f}"
        if trainer.state.fn == TrainerFn.FITTING:
            title += f", epoch {trainer.current_epoch}"
        figures = {
            f"{stage}/confusion_matrix": (f"confusion_{stage}.png", render_confusion(matrix, self.classes, title))
        }
        if mistakes is not None:
            self.mistakes = {key: value.cpu() for key, value in mistakes.items()}
            image = render_mistakes(**self.mistakes, classes=self.classes, title=f"{stage}: ")
            figures[f"{stage}/misclassified"] = (f"misclassified_{stage}.png", image)
        for tag, (file_name, image) in figures.items():
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(tag, np.asarray(image), trainer.global_step, dataformats="HWC")
            if self.save_png and log_dir is not None:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                image.save(Path(log_dir) / file_name)
        if table:
            pl_module.print(format_table(matrix, self.classes, stage))

    def _add_graph(self, trainer: Trainer, pl_module: LightningModule) -> None:
        example = pl_module.example_input_array
        if not isinstance(example, Tensor):
            return
        # The network alone (plain PyTorch), not the LightningModule around it: tracing reads every
        # attribute of what it traces, and the module's torchmetrics objects answer a deprecated one.
        network = getattr(pl_module, "net", pl_module)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # add_graph traces in eval mode, so the BatchNorm statistics are left as they are;
                # TensorBoard's graph still needs torch.jit.trace, whose deprecation notice is noise here.
                with warnings.catch_warnings(), compat.eager(network):
                    warnings.filterwarnings("ignore", r"`torch\.jit\.trace.*` is deprecated", FutureWarning)
                    logger.experiment.add_graph(network, example.to(pl_module.device))


class ConfidentMistakes:
    """The `k` most confident wrong predictions seen so far, kept in fixed-size buffers on the device.

    Each batch adds only its own top `k` candidates (no host sync, no copy of the data set); the
    fixed size lets `gather` all-gather the buffers of every process under DDP. Empty slots and
    right answers carry confidence -1, so they never win a place.
    """

    FIELDS = ("confidence", "predicted", "target", "images")

    def __init__(self, k: int) -> None:
        self.k = k
        self.buffers: dict[str, Tensor] | None = None

    def update(self, images: Tensor, logits: Tensor, targets: Tensor) -> None:
        confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
        confidence = torch.where(predicted != targets, confidence, -1.0)
        batch = dict(zip(self.FIELDS, (confidence, predicted, targets, images.detach()), strict=True))
        batch = _top_k(batch, self.k)
        if self.buffers is None:
            self.buffers = {key: value.new_zeros((self.k, *value.shape[1:])) for key, value in batch.items()}
            self.buffers["confidence"].fill_(-1.0)
        self.buffers = _top_k({key: torch.cat([self.buffers[key], batch[key]]) for key in self.FIELDS}, self.k)

    def gather(self, pl_module: LightningModule) -> dict[str, Tensor]:
        """The `k` most confident mistakes of every process, most confident first (every process must call it)."""
        if self.buffers is None:  # no batch at all
            empty = torch.zeros(0, dtype=torch.long)
            return {
                "confidence": torch.zeros(0),
                "predicted": empty,
                "target": empty,
                "images": torch.zeros(0, 1, 1, 1),
            }
        buffers = self.buffers
        if pl_module.trainer.world_size > 1:
            buffers = {key: value.flatten(0, 1) for key, value in pl_module.all_gather(buffers).items()}
        buffers = _top_k(buffers, self.k)
        wrong = buffers["confidence"] >= 0
        return {key: value[wrong] for key, value in buffers.items()}


def _top_k(buffers: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    """The rows of the `k` highest confidences, highest first."""
    top = buffers["confidence"].topk(min(k, len(buffers["confidence"]))).indices
    return {key: value[top] for key, value in buffers.items()}


# --- names, numbers, the terminal table -------------------------------------------------------


def class_names(trainer: Trainer, pl_module: LightningModule) -> list[str]:
    """The data module's `classes` where it names them, else "0", "1", ... up to the model's classes."""
    classes = getattr(trainer.datamodule, "classes", None)
    if classes:
        return list(classes)
    return [str(i) for i in range(pl_module.hparams["num_classes"])]


def tag_name(name: str) -> str:
    """A class name fit for a logger tag: "T-shirt/top" -> "T-shirt_top", "Ankle boot" -> "Ankle_boot"."""
    return re.sub(r"[^\w.-]+", "_", name)


def accuracy_of(matrix: Tensor) -> float:
    total = int(matrix.sum())
    return int(matrix.diag().sum()) / total if total else math.nan


def per_class_accuracy(matrix: Tensor) -> Tensor:
    """Recall of each class: the diagonal over the row sums (NaN for a class with no images)."""
    counts = matrix.double()
    return counts.diag() / counts.sum(dim=1)


def format_table(matrix: Tensor, classes: Sequence[str], stage: str) -> str:
    """Per-class accuracy as a compact table: images, accuracy, and what each class is most mistaken for.

    Args:
        matrix: (C, C) counts, rows the true class, columns the predicted one.
        classes: the C class names.
        stage: "val" or "test", for the heading.
    """
    width = max(len("class"), *(len(c) for c in classes))
    lines = [
        f"{stage}: per-class accuracy, {int(matrix.sum())} images, accuracy {accuracy_of(matrix):.4f}",
        f"  {'class':<{width}}  images     acc  most mistaken for",
    ]
    for i, (name, acc) in enumerate(zip(classes, per_class_accuracy(matrix).tolist(), strict=True)):
        errors = matrix[i].clone()
        errors[i] = 0
        worst = int(errors.argmax())
        mistaken = f"{classes[worst]} ({int(errors[worst])})" if errors[worst] > 0 else "-"
        lines.append(f"  {name:<{width}}  {int(matrix[i].sum()):>6}  {acc:>6.4f}  {mistaken}")
    return "\n".join(lines)
