"""Every ResNetClassifier argument has a class that says what a resumed run does with it.

A resumed `fit` refuses a change of the network (resnet_lit.models.NETWORK_KEYS) or of how it
trains (resnet_lit.resume.TRAINING_KEYS), and accepts a change of the rest. A new argument that
is in no class fails here, so it cannot silently change what a resumed run trains.
"""

import inspect
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import FAST, data_flags, refused, snapshot

from resnet_lit import ResNetClassifier
from resnet_lit.cli import ResNetCLI
from resnet_lit.models import NETWORK_KEYS
from resnet_lit.resume import TRAINING_KEYS

NETWORK = set(NETWORK_KEYS)  # a resumed run refuses a change: the weights are of one network
TRAINING = set(TRAINING_KEYS)  # a resumed run refuses a change: the optimizer's state is of one recipe
# A resumed run may change these: the same function and the same steps, at another speed.
SPEED = {"channels_last", "compile", "compile_mode"}
# How validate, test and predict score the weights, not how they are trained: a resumed run may change it.
EVALUATION = {"tta"}
# Read only when a run starts: a resumed run's weights come from its checkpoint, so they do nothing there.
START_ONLY = {"init_weights", "zero_init_residual"}
# The input size, linked from the data (after `data.resize`), which a resumed run keeps (resume.DATA_KEYS).
# in_channels and num_classes are linked from the data too, and are network arguments besides.
FROM_DATA = {"image_size"}
CLASSES = {
    "network": NETWORK,
    "training": TRAINING,
    "speed": SPEED,
    "evaluation": EVALUATION,
    "start-only": START_ONLY,
    "from the data": FROM_DATA,
}
LINKED = {"in_channels", "num_classes", "image_size"}  # set from the data module, not given to the model

# A value other than the trained fixture's (resnet8, the paper's recipe) for each argument a resume
# refuses to change; a new network or training argument needs one here.
OTHER_NETWORK = {"arch": "resnet14", "shortcut": "B", "stem": "imagenet", "stride_in_1x1": "false"}
OTHER_TRAINING = {
    "optimizer": "adamw",
    "lr": "0.05",
    "momentum": "0.8",
    "nesterov": "true",
    "weight_decay": "0.001",
    "schedule": "constant",
    "interval": "epoch",
    "milestones": "[5, 8]",
    "gamma": "0.5",
    "step_size": "3",
    "warmup_lr": "0.01",
    "warmup_until_error": "0.5",
    "warmup_steps": "2",
    "label_smoothing": "0.1",
    "ema_decay": "0.9",
}


def init_arguments() -> set[str]:
    return set(inspect.signature(ResNetClassifier.__init__).parameters) - {"self"}


def test_every_argument_is_in_exactly_one_class():
    arguments = init_arguments()
    classified = [name for members in CLASSES.values() for name in members]
    twice = sorted({name for name in classified if classified.count(name) > 1})
    assert not twice, f"in two classes: {twice}"
    assert not sorted(arguments - set(classified)), "in no class (add each to one of CLASSES)"
    assert not sorted(set(classified) - arguments), "classified, but not ResNetClassifier's"


def test_each_refused_argument_has_a_changed_value_to_try():
    assert set(OTHER_NETWORK) == NETWORK - LINKED
    assert set(OTHER_TRAINING) == TRAINING


def resumable_copy(trained: Path, to: Path) -> None:
    shutil.copytree(trained / "lightning_logs", to / "lightning_logs")


def resume_args(fashion_root: Path, changes: dict[str, str]) -> list[str]:
    options = [f"--model.{key}={value}" for key, value in changes.items()]
    return ["fit", "--ckpt_path=last", "--trainer.max_epochs=2", *FAST, *data_flags(fashion_root), *options]


@pytest.mark.parametrize("changes", [OTHER_NETWORK, OTHER_TRAINING], ids=["network", "training"])
def test_a_resume_refuses_a_change_of_every_network_and_training_argument(
    tmp_path, trained, fashion_root, capsys, monkeypatch, changes
):
    resumable_copy(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    line = refused(capsys, resume_args(fashion_root, changes))
    missed = [key for key in changes if f"{key}=" not in line]
    assert not missed, f"not named in the refusal: {missed}: {line}"
    assert snapshot(tmp_path) == before


def test_a_resume_refuses_another_input_size_through_the_data(tmp_path, trained, fashion_root, capsys, monkeypatch):
    resumable_copy(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, [*resume_args(fashion_root, {}), "--data.resize=32"])
    assert "data.resize=32" in line


@pytest.mark.slow  # trains an epoch
def test_a_resume_accepts_a_change_of_the_speed_evaluation_and_start_only_arguments(
    tmp_path, trained, fashion_root, monkeypatch
):
    resumable_copy(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    # compile stays off (compiling on a CPU takes longer than the test); its mode is a speed argument too.
    changes = {
        "channels_last": "false",
        "compile_mode": "max-autotune-no-cudagraphs",
        "tta": "true",
        "zero_init_residual": "true",
        "init_weights": str(checkpoint),
    }
    cli = ResNetCLI(args=resume_args(fashion_root, changes))
    assert cli.trainer.global_step == 20  # continued from the checkpoint's 10 steps
    config = yaml.safe_load((tmp_path / "lightning_logs/version_0/config.yaml").read_text())["model"]
    assert {key: config[key] for key in changes} == {key: yaml.safe_load(value) for key, value in changes.items()}
