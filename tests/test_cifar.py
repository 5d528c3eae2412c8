"""CIFAR10DataModule and configs/cifar10/, on a stand-in written in torchvision's on-disk layout."""

from pathlib import Path

import pytest
import torch
import torchvision
from conftest import standin_rgb_images
from helpers import scalars

import resnet_lit
from resnet_lit.cli import ResNetCLI, main
from resnet_lit.data import CIFAR10DataModule, MissingDataError
from resnet_lit.schedules import end_warmup, warming_up

CIFAR_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "cifar10").glob("*.yaml"))
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def make(root, **kwargs) -> CIFAR10DataModule:
    kwargs = {"data_dir": str(root), "download": False, "val_size": 100, "batch_size": 50, **kwargs}
    return CIFAR10DataModule(**kwargs)


def test_loads_the_pickled_batches_as_uint8_nchw_in_file_order(cifar10_root):
    dm = make(cifar10_root)
    dm.prepare_data()
    dm.setup("fit")
    full = dm.train_set.dataset
    train_images, train_labels = standin_rgb_images(600, seed=1)
    assert full.images.dtype == torch.uint8 and full.images.shape == (600, 3, 32, 32)
    assert torch.equal(full.images, train_images)  # data_batch_1..5, planes R, G, B: pixel for pixel
    assert torch.equal(full.targets, train_labels)
    assert (len(dm.train_set), len(dm.val_set)) == (500, 100)
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    dm.setup("test")
    test_images, test_labels = standin_rgb_images(200, seed=0)
    assert torch.equal(dm.test_set.images, test_images) and torch.equal(dm.test_set.targets, test_labels)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)


def test_the_default_split_is_the_papers_45k_5k():
    # Sec. 4.2: the schedule was "determined on a 45k/5k train/val split" of the 50k training images.
    assert CIFAR10DataModule().hparams.val_size == 5000


def test_batches_are_normalized_per_channel_with_the_training_statistics(cifar10_root):
    dm = make(cifar10_root)
    dm.setup("fit")
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.uint8
    x, y = dm.on_after_batch_transfer((images, targets), 0)
    torch.testing.assert_close(x, (images.float() / 255 - MEAN) / STD)  # float32 rounding: one multiply-add
    assert torch.equal(y, targets)


def test_training_batches_are_cropped_and_flipped_per_image(cifar10_root, in_tmp):
    seen = []

    class Spy(torch.nn.Module):
        """The net, recording the batches it is given."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            if self.training:  # not the model summary's example input
                seen.append(x.detach().clone())
            return self.net(x)

    cli = ResNetCLI(
        args=[
            "--data=CIFAR10DataModule",
            f"--data.data_dir={cifar10_root}",
            "--data.download=false",
            "--data.val_size=100",
            "--data.batch_size=50",
            "--model.arch=resnet8",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ],
        run=False,
    )
    assert (cli.model.hparams.in_channels, cli.model.hparams.image_size) == (3, 32)
    cli.model.net = Spy(cli.model.net)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    dm = cli.datamodule
    [trained] = seen
    first = next(iter(dm.train_dataloader()))[0]  # the same images, before augmentation
    plain = dm.preprocess(first)
    assert trained.shape == plain.shape == (50, 3, 32, 32)
    changed = [not torch.equal(a, b) for a, b in zip(trained, plain, strict=True)]
    assert 25 < sum(changed) <= 50  # most images are shifted and/or mirrored, each by its own draw


def test_a_damaged_file_fails_the_checksum(cifar10_root, tmp_path):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(cifar10_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(MissingDataError, match="md5 check"):
        make(root).prepare_data()


def test_a_tarball_in_data_dir_is_verified_and_extracted_without_internet(cifar10_root, tmp_path, monkeypatch):
    import hashlib
    import tarfile
    import urllib.request

    def no_internet(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_internet)
    root = tmp_path / "offline"
    root.mkdir()
    tarball = root / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(cifar10_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", hashlib.md5(tarball.read_bytes()).hexdigest())
    dm = make(root, download=True)
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.test_set) == 200


def test_missing_data_through_the_cli_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(
            [
                "fit",
                "--data=CIFAR10DataModule",
                f"--data.data_dir={tmp_path}",
                "--data.download=false",
                "--trainer.max_epochs=1",
            ]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: CIFAR-10 is not in") and "cifar-10-batches-py" in err[0]


def test_exported_lazily_from_the_package():
    assert resnet_lit.CIFAR10DataModule is CIFAR10DataModule
    assert "CIFAR10DataModule" in resnet_lit.__all__


# --- configs/cifar10/ ---------------------------------------------------------------------------


def test_the_promised_cifar10_configs_exist():
    names = {p.stem for p in CIFAR_CONFIGS}
    assert names >= {f"{kind}{d}" for kind in ("r", "plain") for d in (20, 32, 44, 56, 110)}


def cli_for(config: Path, cifar10_root: Path, *extra: str) -> ResNetCLI:
    return ResNetCLI(
        args=[f"--config={config}", f"--data.data_dir={cifar10_root}", "--data.download=false", *extra], run=False
    )


@pytest.mark.parametrize("config", CIFAR_CONFIGS, ids=lambda p: p.stem)
def test_cifar10_config_instantiates_with_the_papers_recipe(config, cifar10_root, in_tmp):
    cli = cli_for(config, cifar10_root)
    hp, data = cli.model.hparams, cli.datamodule.hparams
    depth = int(config.stem.lstrip("rplain"))
    assert hp.arch == f"{'plain' if config.stem.startswith('plain') else 'resnet'}{depth}"
    assert isinstance(cli.datamodule, CIFAR10DataModule)
    assert (hp.in_channels, hp.num_classes, hp.image_size) == (3, 10, 32)  # linked from the data
    assert (data.batch_size, data.val_size, data.crop_padding, data.hflip) == (128, 5000, 4, True)
    assert (hp.optimizer, hp.lr, hp.momentum, hp.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (hp.schedule, hp.interval, hp.milestones) == ("multistep", "step", [32_000, 48_000])
    assert cli.trainer.max_steps == 64_000
    assert (hp.warmup_lr, hp.warmup_until_error) == ((0.01, 0.8) if depth == 110 else (None, 0.8))


def lr_at(scheduler, step: int) -> float:
    """The learning rate the optimizer uses for iteration `step` (0-based)."""
    scheduler.last_epoch = step - 1
    scheduler.step()
    return scheduler.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("config", CIFAR_CONFIGS, ids=lambda p: p.stem)
def test_the_scheduler_built_from_the_config_decays_at_32k_and_48k(config, cifar10_root, in_tmp):
    cli = cli_for(config, cifar10_root)
    setup = cli.model.configure_optimizers()
    scheduler, interval = setup["lr_scheduler"]["scheduler"], setup["lr_scheduler"]["interval"]
    assert interval == "step"  # milestones count iterations, as the paper's do
    if cli.model.hparams.warmup_lr is not None:
        assert warming_up(scheduler)
        assert [lr_at(scheduler, t) for t in (0, 399, 40_000)] == pytest.approx([0.01] * 3)
        end_warmup(scheduler)  # what the module does once a batch's training error is below 80%
    assert not warming_up(scheduler)
    expected = {0: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001, 63_999: 0.001}
    assert {t: lr_at(scheduler, t) for t in expected} == pytest.approx(expected)


@pytest.mark.slow  # trains 16 steps
def test_resnet110_warms_up_at_0_01_then_goes_back_to_0_1_in_training(cifar10_root, in_tmp):
    """Sec. 4.2, trained: 0.01 until a batch's training error is below 80%, then 0.1, never 0.01 again.

    The config's own schedule and warm-up; only the net (resnet8: CPU seconds, not minutes) and
    the length are smaller. `lr` is the LearningRateMonitor's TensorBoard tag, one per step.
    """
    config = Path(__file__).parents[1] / "configs" / "cifar10" / "r110.yaml"
    args = [
        "fit",
        f"--config={config}",
        f"--data.data_dir={cifar10_root}",
        "--data.download=false",
        "--data.val_size=100",
        "--data.batch_size=50",
        "--model.arch=resnet8",
        "--trainer.max_steps=16",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
    ]
    main(args)
    logged = scalars(in_tmp / "lightning_logs" / "version_0")
    lrs = [lr for _, lr in sorted(logged["lr"])]
    errors = [1 - acc for _, acc in sorted(logged["train/acc"])]
    assert len(lrs) == len(errors) == 16
    ended = next(i for i, e in enumerate(errors) if e < 0.8)  # the first batch below 80% error
    assert 0 < ended < 15, "the stand-in takes a few steps at 0.01 to get below 80% error (7 with seed 0)"
    assert lrs[: ended + 1] == pytest.approx([0.01] * (ended + 1))  # that batch itself still at 0.01
    assert lrs[ended + 1 :] == pytest.approx([0.1] * (15 - ended))  # back to 0.1 from the next step on
