"""The training options of the recipes (configs/quick/, configs/best/): each does what it says, and resumes exactly.

Label smoothing, Random Erasing, an exponential moving average of the weights and test-time
flips, on the stand-in data through the CLI.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import FAST, assert_identical, data_flags
from lightning.pytorch import Callback, Trainer

from resnet_lit import ResNetClassifier
from resnet_lit.cli import ResNetCLI
from resnet_lit.transforms import random_erasing, seeded_generator

SMALL = [*FAST, "--model.arch=resnet8"]
OPTIONS = {
    "label smoothing": ["--model.label_smoothing=0.1"],
    "random erasing": ["--data.erasing=0.5"],
    "weight average": ["--model.ema_decay=0.9"],
    "all, as configs/quick": ["--model.label_smoothing=0.1", "--data.erasing=0.5", "--model.ema_decay=0.9"],
}


# --- each option changes what it should ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")  # steps called directly
def test_label_smoothing_is_in_the_training_loss_only():
    torch.manual_seed(0)
    model = ResNetClassifier(arch="resnet8", label_smoothing=0.1)
    images, targets = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with torch.no_grad():
        logits = model(images)  # training mode: the logits the training step sees
        smoothed, plain = (F.cross_entropy(logits, targets, label_smoothing=s).item() for s in (0.1, 0.0))
        assert abs(smoothed - plain) > 1e-3  # far enough apart (the tolerance is 1e-6) to tell them apart
        assert model.training_step((images, targets), 0).item() == pytest.approx(smoothed, rel=1e-6)
        model.eval()
        logits = model(images)
        smoothed, plain = (F.cross_entropy(logits, targets, label_smoothing=s).item() for s in (0.1, 0.0))
        model.validation_step((images, targets), 0)
        model.test_step((images, targets), 0)
    assert abs(smoothed - plain) > 1e-3
    assert model.val_loss.compute().item() == pytest.approx(plain, rel=1e-6)
    assert model.test_loss.compute().item() == pytest.approx(plain, rel=1e-6)


def test_random_erasing_fills_one_rectangle_per_chosen_image_with_the_mean():
    images = torch.randn(64, 1, 28, 28) + 5  # no zeros before erasing
    erased = random_erasing(images, 1.0, seeded_generator(torch.device("cpu"), 0, 1, 2))
    zero = erased == 0
    areas = zero.flatten(1).sum(1).float() / (28 * 28)
    assert (areas >= 0.02 - 1e-3).all() and (areas <= 0.4 + 0.05).all()  # the scale, after rounding
    for mask in zero[:, 0]:  # a rectangle: its rows and columns span exactly its area
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert len({tuple(m.nonzero()[0].tolist()) for m in zero[:, 0]}) > 32  # drawn per image
    assert torch.equal(erased[~zero], images[~zero])
    same = random_erasing(images, 1.0, seeded_generator(torch.device("cpu"), 0, 1, 2))
    assert torch.equal(same, erased)  # keyed: a resumed run draws the same rectangles
    assert torch.equal(random_erasing(images, 0.0, seeded_generator(torch.device("cpu"), 0)), images)


class ModelInputs(Callback):
    """The image batches as the model receives them (after the data module's on_after_batch_transfer), by stage."""

    def __init__(self) -> None:
        self.images: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.images["train"].append(batch[0].clone())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.images["val"].append(batch[0].clone())

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.images["test"].append(batch[0].clone())


def test_random_erasing_touches_training_batches_only(fashion_root, tmp_path):
    from resnet_lit import FashionMNISTDataModule

    data = FashionMNISTDataModule(
        data_dir=str(fashion_root), download=False, val_size=100, batch_size=50, erasing=1.0, seed=0
    )
    inputs = ModelInputs()
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[inputs],
    )
    model = ResNetClassifier(arch="resnet8")
    trainer.fit(model, data)
    trainer.test(model, data, verbose=False)
    # An erased rectangle is the data set's mean, 0 after normalization, over 2% or more of the image.
    erased_pixels = 0.019 * 28 * 28

    def zeros(batches: list[torch.Tensor]) -> torch.Tensor:
        assert batches
        return torch.cat(batches).eq(0).all(dim=1).flatten(1).sum(1)

    assert (zeros(inputs.images["train"]) >= erased_pixels).all()  # erasing=1.0: every training image
    assert (zeros(inputs.images["val"]) < erased_pixels).all()
    assert (zeros(inputs.images["test"]) < erased_pixels).all()


@pytest.mark.slow  # trains more than once, or for several epochs
def test_the_weight_average_evaluates_and_is_checkpointed(in_tmp, data_args):
    cli = ResNetCLI(args=["fit", *SMALL, "--model.ema_decay=0.9", "--trainer.max_epochs=2", *data_args])
    model = cli.model.eval()
    assert not torch.equal(model.ema_net.fc.weight, model.net.fc.weight)  # an average, not a copy
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(images), model.ema_net(images))  # evaluation uses the average
    ckpt = in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(state["ema_net.fc.weight"], model.ema_net.fc.weight)
    tested = ResNetCLI(args=["test", f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false"])
    assert tested.model.ema_net is not None


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")  # steps called directly
def test_test_time_flips_average_the_two_softmaxes():
    torch.manual_seed(0)
    model = ResNetClassifier(arch="resnet8", tta=True).eval()
    images, targets = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with torch.no_grad():
        unflipped = model.net(images).softmax(1)
        expected = (unflipped + model.net(images.flip(-1)).softmax(1)) / 2
        assert (expected - unflipped).abs().max() > 1e-3  # the mirror image changes the answer
        logits = model.validation_step((images, targets), 0)
        out = model.predict_step((images, targets), 0)
    # What evaluation scores is the log of the averaged softmax: its loss and accuracy are the average's.
    torch.testing.assert_close(logits.exp(), expected)
    torch.testing.assert_close(model.val_loss.compute(), F.nll_loss(expected.log(), targets))
    torch.testing.assert_close(model.val_acc.compute(), (expected.argmax(1) == targets).float().mean())
    torch.testing.assert_close(out["confidence"], expected.max(1).values)
    assert torch.equal(out["predicted"], expected.argmax(1))


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")  # a step called directly
def test_test_time_flips_keep_the_loss_of_a_confident_mistake_finite():
    # Logit gaps in the thousands: both softmaxes round the wrong class's probability to 0, and the
    # log of their average would be -inf (an infinite test/loss).
    torch.manual_seed(0)
    model = ResNetClassifier(arch="resnet8", tta=True).eval()
    with torch.no_grad():
        model.net.fc.weight.mul_(1e4)
        images = torch.randn(4, 1, 28, 28)
        wrong = model.net(images).argmin(dim=1)
        model.validation_step((images, wrong), 0)
    loss = model.val_loss.compute()
    assert torch.isfinite(loss) and loss > 100, loss


@pytest.mark.slow  # trains more than once, or for several epochs
def test_test_time_flips_are_an_option_of_test(in_tmp, data_args):
    ResNetCLI(args=["fit", *SMALL, "--trainer.max_epochs=1", *data_args])
    ckpt = "lightning_logs/version_0/checkpoints/last.ckpt"
    plain = ResNetCLI(args=["test", f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false"])
    flipped = ResNetCLI(args=["test", f"--ckpt_path={ckpt}", "--model.tta=true", "--trainer.enable_progress_bar=false"])
    assert flipped.model.hparams.tta and not plain.model.hparams.tta
    assert flipped.trainer.callback_metrics["test/loss"] != plain.trainer.callback_metrics["test/loss"]


# --- and a resumed run still ends on the uninterrupted run's weights ----------------------------------


@pytest.mark.slow  # three short fits each
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS)
def test_a_resumed_run_with_the_option_ends_on_the_uninterrupted_weights(tmp_path, fashion_root, monkeypatch, options):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *SMALL, "--trainer.deterministic=true", *options, *data_flags(fashion_root)]
    whole = ResNetCLI(args=[*args, "--trainer.max_epochs=2", "--trainer.default_root_dir=whole"])
    ResNetCLI(args=[*args, "--trainer.max_epochs=1"])
    resumed = ResNetCLI(args=[*args, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert resumed.trainer.global_step == whole.trainer.global_step == 20
    assert_identical(resumed.model.state_dict(), whole.model.state_dict())
