"""ResNetClassifier through the public class and a Trainer."""

import copy
import re
from types import SimpleNamespace

import pytest
import torch
from helpers import scalars
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor

from resnet_lit import FashionMNISTDataModule, ResNetClassifier


def test_paper_defaults_and_shapes():
    model = ResNetClassifier()
    assert model.hparams.arch == "resnet20"
    assert model.example_input_array.shape == (2, 1, 28, 28)
    assert model(model.example_input_array).shape == (2, 10)


def test_steps_compute_cross_entropy_and_accuracy():
    torch.manual_seed(0)
    model = ResNetClassifier(arch="resnet8")
    images, targets = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = model.training_step((images, targets), 0)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(images), targets).item(), rel=1e-5)
    out = model.predict_step((images, targets), 0)
    assert out["predicted"].shape == (8,) and torch.all(out["confidence"] <= 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0}, "model.lr must be positive"),
        ({"lr": -0.1}, "model.lr must be positive"),
        ({"lr": float("nan")}, "model.lr must be positive and finite, got nan"),
        ({"lr": float("inf")}, "model.lr must be positive and finite, got inf"),
        ({"weight_decay": float("inf")}, "model.weight_decay must be 0 or more and finite"),
        ({"gamma": 0}, "model.gamma must be positive"),
        ({"warmup_until_error": float("nan")}, "model.warmup_until_error is a training error, 0 or more"),
        ({"warmup_steps": 10, "schedule": "onecycle"}, "not combined with onecycle"),
        ({"momentum": 1.0}, "model.momentum must be in [0, 1)"),
        ({"milestones": [0, 10]}, "must be positive"),
        ({"arch": "resnet21"}, "6n+2"),
        ({"warmup_lr": 0.01, "schedule": "onecycle"}, "not combined with onecycle"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ResNetClassifier(**kwargs)


def fit(tmp_path, fashion_root, steps: int, **kwargs) -> tuple[Trainer, ResNetClassifier]:
    model = ResNetClassifier(arch="resnet8", **kwargs)
    data = FashionMNISTDataModule(data_dir=str(fashion_root), download=False, val_size=100, batch_size=50, seed=0)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LearningRateMonitor()],
    )
    trainer.fit(model, data)
    return trainer, model


@pytest.mark.parametrize(("until", "expected"), [(1.01, [0.01, 0.1, 0.1, 0.1]), (0.0, [0.01, 0.01, 0.01, 0.01])])
def test_warmup_ends_on_the_training_error_and_goes_back(tmp_path, fashion_root, until, expected):
    trainer, _ = fit(tmp_path, fashion_root, 4, warmup_lr=0.01, warmup_until_error=until, milestones=[1000])
    lrs = [v for _, v in scalars(trainer.logger.log_dir)["lr"]]
    assert lrs == pytest.approx(expected)


class StepLearningRates(Callback):
    """The learning rate each training step is taken with."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_the_warmup_looks_at_the_training_error_at_logging_steps_only(tmp_path, fashion_root):
    # Logging every 3 steps: the first batch's error is already below 1.01, but the warm-up ends
    # only after step 3, the first logging step (where the error is read on the host anyway).
    model = ResNetClassifier(arch="resnet8", warmup_lr=0.01, warmup_until_error=1.01, milestones=[1000])
    data = FashionMNISTDataModule(data_dir=str(fashion_root), download=False, val_size=100, batch_size=50, seed=0)
    lrs = StepLearningRates()
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=6,
        log_every_n_steps=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[lrs],
    )
    trainer.fit(model, data)
    assert lrs.lrs == pytest.approx([0.01, 0.01, 0.01, 0.1, 0.1, 0.1])


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        (
            {"schedule": "multistep", "milestones": [2], "interval": "step"},
            lambda lrs: lrs == pytest.approx([0.1, 0.1, 0.01, 0.01]),
        ),
        ({"schedule": "cosine"}, lambda lrs: lrs[0] == pytest.approx(0.1) and lrs[0] > lrs[1] > lrs[2] > lrs[3] > 0),
        ({"schedule": "onecycle"}, lambda lrs: lrs[0] < max(lrs) and lrs[-1] < max(lrs)),
        ({"schedule": "constant"}, lambda lrs: lrs == pytest.approx([0.1] * 4)),
    ],
)
def test_schedules_run_per_step(tmp_path, fashion_root, kwargs, check):
    trainer, _ = fit(tmp_path, fashion_root, 4, **kwargs)
    assert check([v for _, v in scalars(trainer.logger.log_dir)["lr"]])


def test_hp_metric_is_the_best_val_acc_so_far(monkeypatch):
    model = ResNetClassifier(arch="resnet8")
    model._trainer = SimpleNamespace(sanity_checking=False)
    logged = []
    monkeypatch.setattr(model, "log", lambda name, value, **_: logged.append((name, float(value))))
    targets = torch.arange(10)
    for correct in (8, 3, 9):  # val/acc 0.8, then 0.3, then 0.9
        logits = torch.nn.functional.one_hot(torch.cat([targets[:correct], (targets[correct:] + 1) % 10]), 10).float()
        model.val_acc(logits, targets)
        model.on_validation_epoch_end()
        model.val_acc.reset()
    assert logged == [
        ("hp_metric", pytest.approx(0.8)),
        ("hp_metric", pytest.approx(0.8)),
        ("hp_metric", pytest.approx(0.9)),
    ]


# --- the optimizer trains the network, not its weight average -------------------------------------


def test_the_optimizer_holds_the_trained_networks_parameters_only():
    model = ResNetClassifier(arch="resnet8", ema_decay=0.9)
    optimizer = model.configure_optimizers()["optimizer"]
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert [id(p) for p in held] == [id(p) for p in model.net.parameters()]


def one_sgd_step(model: ResNetClassifier, optimizer: torch.optim.Optimizer, seed: int) -> None:
    torch.manual_seed(seed)
    images, targets = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), targets).backward()
    optimizer.step()


def test_an_optimizer_state_that_also_held_the_weight_average_resumes_the_same_run():
    # Earlier code gave the optimizer every parameter of the module, the average's frozen copies
    # too: its checkpoints list twice the network's parameters (state for the first half only).
    hp = {"arch": "resnet8", "ema_decay": 0.9}
    torch.manual_seed(0)
    before = ResNetClassifier(**hp)
    old = torch.optim.SGD(before.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    one_sgd_step(before, old, seed=1)
    # A copy, as a checkpoint file is: the state dicts hold the live tensors.
    checkpoint = copy.deepcopy({"state_dict": before.state_dict(), "optimizer_states": [old.state_dict()]})
    trained = len(list(before.net.parameters()))
    assert len(checkpoint["optimizer_states"][0]["param_groups"][0]["params"]) == 2 * trained

    resumed = ResNetClassifier(**hp)
    resumed.load_state_dict(checkpoint["state_dict"])
    resumed.on_load_checkpoint(checkpoint)  # as Lightning calls it, before it loads the optimizer's state
    optimizer = resumed.configure_optimizers()["optimizer"]
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    one_sgd_step(resumed, optimizer, seed=2)
    one_sgd_step(before, old, seed=2)
    for key, value in before.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
