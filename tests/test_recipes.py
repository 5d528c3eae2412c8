"""The training options of the recipes (configs/quick/, configs/best/): each does what it says, and resumes exactly.

Label smoothing, Random Erasing, an exponential moving average of the weights and test-time
flips, on the stand-in data through the CLI.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_identical, data_flags

from resnet_lit import ResNetClassifier
from resnet_lit.cli import ResNetCLI
from resnet_lit.transforms import random_erasing, seeded_generator

FAST = ["--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=5", "--model.arch=resnet8"]
OPTIONS = {
    "label smoothing": ["--model.label_smoothing=0.1"],
    "random erasing": ["--data.erasing=0.5"],
    "weight average": ["--model.ema_decay=0.9"],
    "all, as configs/quick": ["--model.label_smoothing=0.1", "--data.erasing=0.5", "--model.ema_decay=0.9"],
}


# --- each option changes what it should ---------------------------------------------------------


def test_label_smoothing_is_in_the_training_loss_only():
    torch.manual_seed(0)
    model = ResNetClassifier(arch="resnet8", label_smoothing=0.1)
    images, targets = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    logits = model(images)
    loss = model.training_step((images, targets), 0).item()
    assert loss == pytest.approx(F.cross_entropy(logits, targets, label_smoothing=0.1).item())
    assert loss != pytest.approx(F.cross_entropy(logits, targets).item())
    model.eval()
    with torch.no_grad():
        assert model._eval_step((images, targets), "val", model.val_acc, model.val_loss).shape == (8, 10)


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


def test_random_erasing_touches_training_batches_only(fashion_root):
    from resnet_lit import FashionMNISTDataModule

    data = FashionMNISTDataModule(data_dir=str(fashion_root), download=False, val_size=100, erasing=1.0)
    data.setup("fit")
    images, targets = next(iter(data.val_dataloader()))
    evaluated, _ = data.on_after_batch_transfer((images, targets), 0)  # no trainer: not training
    assert not (evaluated == 0).all(dim=1).flatten(1).any(1).all()


@pytest.mark.slow  # trains more than once, or for several epochs
def test_the_weight_average_evaluates_and_is_checkpointed(in_tmp, data_args):
    cli = ResNetCLI(args=["fit", *FAST, "--model.ema_decay=0.9", "--trainer.max_epochs=2", *data_args])
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


def test_test_time_flips_average_the_two_softmaxes():
    torch.manual_seed(0)
    model = ResNetClassifier(arch="resnet8", tta=True).eval()
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = (model.net(images).softmax(1) + model.net(images.flip(-1)).softmax(1)) / 2
        out = model.predict_step((images, torch.zeros(4, dtype=torch.long)), 0)
    torch.testing.assert_close(out["confidence"], expected.max(1).values)


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
    ResNetCLI(args=["fit", *FAST, "--trainer.max_epochs=1", *data_args])
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
    args = ["fit", *FAST, "--trainer.deterministic=true", *options, *data_flags(fashion_root)]
    whole = ResNetCLI(args=[*args, "--trainer.max_epochs=2", "--trainer.default_root_dir=whole"])
    ResNetCLI(args=[*args, "--trainer.max_epochs=1"])
    resumed = ResNetCLI(args=[*args, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert resumed.trainer.global_step == whole.trainer.global_step == 20
    assert_identical(resumed.model.state_dict(), whole.model.state_dict())
