"""Every shipped config parses and instantiates, and says what its file name says."""

import sys
from pathlib import Path

import pytest

from resnet_lit.cli import ResNetCLI

# The CIFAR-10 configs (configs/cifar10/) need CIFAR-10 data: tests/test_cifar.py checks them.
CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml") if p.parent.name != "cifar10")


def test_the_promised_configs_exist():
    names = {str(p.relative_to(p.parents[1] if p.parent.name == "baseline" else p.parent)) for p in CONFIGS}
    promised = {f"r{d}.yaml" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110)}
    promised |= {f"plain{d}.yaml" for d in (20, 32, 44, 56, 110)}
    promised |= {f"baseline/r{d}.yaml" for d in (18, 34, 50)}
    assert promised <= names


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda p: p.stem if p.parent.name == "configs" else f"{p.parent.name}/{p.stem}"
)
def test_config_instantiates(config, in_tmp, fashion_root, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["resnet_lit"])
    args = [f"--config={config}", f"--data.data_dir={fashion_root}", "--data.download=false"]
    cli = ResNetCLI(args=args, run=False)
    hp = cli.model.hparams
    depth = int("".join(c for c in config.stem if c.isdigit()))
    kind = "plain" if config.stem.startswith("plain") else "resnet"
    assert hp.arch == f"{kind}{depth}"
    assert (hp.in_channels, hp.num_classes) == (1, 10)
    if config.parent.name == "finetune":  # from ImageNet weights, on resized images
        assert hp.init_weights == "ResNet18_Weights.IMAGENET1K_V1" and hp.stem == "imagenet"
        assert cli.datamodule.hparams.resize == 64 and hp.lr == 0.01
        return
    if config.parent.name == "best":  # the long recipe: Random Erasing, label smoothing, weight average
        assert (hp.label_smoothing, hp.ema_decay, cli.datamodule.hparams.erasing) == (0.1, 0.999, 0.5)
        assert cli.trainer.max_epochs == 200 and hp.schedule == "cosine"
        return
    if config.parent.name == "quick":  # minutes on a CPU: a short one-cycle run, not the paper's schedule
        assert (hp.schedule, hp.lr, hp.label_smoothing) == ("onecycle", 0.2, 0.1) and cli.trainer.max_epochs == 4
        return
    if config.parent.name == "gpu":  # four times the batch, the learning rate scaled with it
        assert cli.datamodule.hparams.batch_size == 512 and hp.lr == 0.4 and hp.warmup_steps > 0
        assert cli.trainer.precision == "bf16-mixed" and hp.compile and hp.compile_mode == "reduce-overhead"
        cpu_twin = ResNetCLI(args=[f"--config={config.parents[1] / config.name}", *args[1:]], run=False)
        if depth == 20:  # the same epochs: a quarter of the iterations, the decays at the same fractions
            assert cli.trainer.max_steps * 4 == pytest.approx(cpu_twin.trainer.max_steps, abs=4)
            assert [m * 4 for m in hp.milestones] == pytest.approx(cpu_twin.model.hparams.milestones, abs=4)
        else:
            assert cli.trainer.max_epochs == cpu_twin.trainer.max_epochs
        return
    assert cli.datamodule.hparams.batch_size == 128
    if config.parent.name == "baseline":  # the original report's settings
        assert (hp.lr, hp.momentum, hp.schedule, hp.stem) == (0.05, 0.0, "constant", "imagenet")
        assert hp.image_size == 224 and cli.datamodule.hparams.resize == 224
        assert cli.trainer.max_epochs == {18: 10, 34: 10, 50: 5}[depth]
    elif depth in (18, 34, 50, 101, 152):
        assert hp.stem == "small" and hp.shortcut == "B"
    else:  # the paper's CIFAR recipe, scaled to 55k images
        assert (hp.lr, hp.momentum, hp.weight_decay) == (0.1, 0.9, 1e-4)
        assert hp.interval == "step" and hp.milestones == [39111, 58667]
        assert cli.trainer.max_steps == 78222
        assert hp.warmup_lr == (0.01 if depth == 110 else None)
