"""Faults and bad input through the product's entry points: nothing lost, nothing run, one clear line.

The interruption tests run `python -m resnet_lit` as a subprocess and kill or signal it, as a
scheduler or a user would.
"""

import csv
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST, assert_identical, data_flags, logged_steps, refused, snapshot, weights
from lightning.pytorch import Callback
from PIL import Image
from processes import REPO, finish, run_module
from torchvision.datasets import FashionMNIST

from resnet_lit.checkpointing import CheckpointError, SafeCheckpointIO, load_checkpoint
from resnet_lit.cli import ResNetCLI, main
from resnet_lit.errors import NonFiniteLossError
from resnet_lit.module import ResNetClassifier

# Two epochs of 10 steps; the cosine schedule changes the lr every step, so its state must resume too.
EXACT = ["--trainer.max_epochs=2", "--trainer.deterministic=true", "--seed_everything=7", *FAST]
# Two epochs of 10 steps, under two kinds of config: one that stops at max_epochs (the Table 1
# configs; the cosine schedule changes the lr every step, so its state must resume too) and the
# paper's configs, which set max_steps (Lightning restores those differently), with its decays
# moved into the 20 steps.
RESUMED_CONFIGS = {
    "max_epochs config": ["--model.arch=resnet8", "--model.schedule=cosine"],
    "r20.yaml with max_steps": [f"--config={REPO / 'configs/r20.yaml'}", "--model.milestones=[8,15]"],
}
STEPS = 20


@pytest.fixture(scope="module", params=RESUMED_CONFIGS.values(), ids=RESUMED_CONFIGS)
def exact(request) -> list[str]:
    """The arguments of a run that must resume to the bit."""
    return [*request.param, *EXACT]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fashion_root, exact) -> dict[str, torch.Tensor]:
    """The final weights of the uninterrupted run the interrupted ones must reproduce."""
    root = tmp_path_factory.mktemp("uninterrupted")
    output = finish(run_module(["fit", *exact, *data_flags(fashion_root)], cwd=root))
    last = root / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert last.is_file(), output
    assert load_checkpoint(last)["global_step"] == STEPS
    return weights(last)


# --- 1. resume to the bit -------------------------------------------------------------------------


@pytest.mark.slow  # three short subprocess runs
def test_sigkill_after_an_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path, fashion_root, exact, reference):
    args = ["fit", *exact, *data_flags(fashion_root)]
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    process = run_module(args, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # no handler can run: what a crash or the OOM killer does
    finish(process)
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(last)["global_step"]
    assert 0 < killed_at < STEPS and killed_at % 10 == 0  # an epoch-end checkpoint, work left to do
    first_events = set((tmp_path / "lightning_logs/version_0").glob("events.out.tfevents.*"))

    output = finish(run_module([*args, "--ckpt_path=last"], cwd=tmp_path))
    assert "Restoring states from the checkpoint path at lightning_logs/version_0/checkpoints/last.ckpt" in output
    assert load_checkpoint(last)["global_step"] == STEPS
    # The resumed process trained only the steps after the checkpoint: it did not start over,
    # which with the same seed would also have ended on the reference weights.
    (resumed_events,) = set((tmp_path / "lightning_logs/version_0").glob("events.out.tfevents.*")) - first_events
    steps = logged_steps(resumed_events)
    assert steps and min(steps) >= killed_at
    assert_identical(weights(last), reference)


@pytest.mark.slow  # two short subprocess runs each
@pytest.mark.parametrize(
    "step, epoch",
    [(5, 0), (10, 1), (13, 1)],  # a validation runs to its end first: the stop at step 10 is after epoch 0
    ids=["before any checkpoint", "during validation", "mid-epoch after a checkpoint"],
)
def test_sigterm_saves_says_where_and_resumes_to_the_bit(tmp_path, fashion_root, exact, reference, step, epoch):
    args = ["fit", *exact, *data_flags(fashion_root)]
    signal_at = ["--trainer.callbacks+=processes.SignalAtStep", f"--trainer.callbacks.step={step}"]
    process = run_module([*args, *signal_at], cwd=tmp_path)
    output = finish(process)
    assert process.returncode == 128 + signal.SIGTERM
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert f"SIGTERM: stopped at epoch {epoch}, step {step} and saved {last.resolve()}" in output
    assert load_checkpoint(last)["global_step"] == step

    output = finish(run_module([*args, "--ckpt_path=last"], cwd=tmp_path))
    assert "Restoring states from the checkpoint path" in output
    assert "not resumable" not in output  # Lightning's warning for loaders that restart the epoch
    assert not list(last.parent.glob("last-v*.ckpt"))  # the resumed run went on writing last.ckpt
    assert_identical(weights(last), reference)


@pytest.mark.slow  # three short subprocess runs
@pytest.mark.parametrize(
    "callback, step, expected",
    [
        ("SignalAtBatch", 0, "SIGTERM: stopped before the first training step; nothing was saved and its run folder "),
        ("SignalThenFail", 3, "SIGTERM: stopped during step 4; nothing was saved and its run folder is removed"),
        ("SignalThenFail", 12, "SIGTERM: stopped during step 13; nothing saved after {last}; continue with"),
    ],
    ids=["in the sanity check", "an error in the step, no checkpoint yet", "an error in the step after a checkpoint"],
)
def test_sigterm_before_the_first_step_or_that_fails_a_step_is_the_clean_stop(
    tmp_path, fashion_root, callback, step, expected
):
    # The sanity check is where torch.compile first compiles; the same SIGTERM to the process group
    # ends its compiler processes, and the step fails: both are the signal's stop, not a traceback.
    signal_at = [f"--trainer.callbacks+=processes.{callback}"]
    signal_at += [f"--trainer.callbacks.step={step}"] if callback == "SignalThenFail" else []
    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=2", *FAST, *data_flags(fashion_root), *signal_at]
    process = run_module(args, cwd=tmp_path)
    output = finish(process)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    last = (tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt").resolve()
    assert expected.format(last=last) in output, output
    assert last.is_file() == (step > 10)  # the epoch-end checkpoint of step 10 stays; no folder without one
    assert (tmp_path / "lightning_logs").exists() == (step > 10)


# Extending a finished run: schedules that do not depend on the run's length (a cosine one would be
# refused, tests/test_checkpoints.py).
EXTENDED_CONFIGS = {
    "max_epochs config": ["--model.arch=resnet8", "--model.milestones=[8,15]"],
    "r20.yaml with max_steps": RESUMED_CONFIGS["r20.yaml with max_steps"],
}


@pytest.mark.slow  # three short runs
@pytest.mark.parametrize("config", EXTENDED_CONFIGS.values(), ids=EXTENDED_CONFIGS)
def test_a_finished_run_extended_by_an_epoch_trains_exactly_that_epoch(tmp_path, fashion_root, monkeypatch, config):
    args = ["fit", *config, *EXACT, *data_flags(fashion_root)]  # 2 epochs
    monkeypatch.chdir(tmp_path)
    uninterrupted = ResNetCLI(args=[*args, "--trainer.default_root_dir=uninterrupted"])
    ResNetCLI(args=[*args, "--trainer.max_epochs=1"])
    run = tmp_path / "lightning_logs/version_0"
    first_events = set(run.glob("events.out.tfevents.*"))
    cli = ResNetCLI(args=[*args, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert cli.trainer.global_step == STEPS
    (resumed_events,) = set(run.glob("events.out.tfevents.*")) - first_events
    assert logged_steps(resumed_events) == list(range(10, 20))  # the second epoch's steps, each once
    assert_identical(weights(run / "checkpoints/last.ckpt"), uninterrupted.model.state_dict())
    again = ResNetCLI(args=[*args, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert again.trainer.global_step == STEPS  # nothing left to train: nothing trained


@pytest.mark.slow  # one short subprocess run
def test_a_first_ctrl_c_saves_after_the_step(tmp_path, fashion_root):
    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=2", *FAST, *data_flags(fashion_root)]
    signal_at = ["--trainer.callbacks+=processes.SignalAtStep", "--trainer.callbacks.step=13"]
    process = run_module([*args, *signal_at, "--trainer.callbacks.signal_name=SIGINT"], cwd=tmp_path)
    output = finish(process)
    assert process.returncode == 130
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert f"Ctrl-C: stopped at epoch 1, step 13 and saved {last.resolve()}" in output
    assert load_checkpoint(last)["global_step"] == 13


@pytest.mark.slow  # trains more than once, or for several epochs
def test_resuming_a_run_in_a_relative_root_dir_keeps_writing_its_last_checkpoint(in_tmp, fashion_root):
    args = ["fit", "--model.arch=resnet8", "--trainer.default_root_dir=runs", *FAST, *data_flags(fashion_root)]
    ResNetCLI(args=[*args, "--trainer.max_epochs=1"])
    ResNetCLI(args=[*args, "--trainer.max_epochs=2", "--ckpt_path=last"])
    folder = in_tmp / "runs/lightning_logs/version_0/checkpoints"
    assert load_checkpoint(folder / "last.ckpt")["global_step"] == 20
    assert not list(folder.glob("last-v*.ckpt"))  # Lightning's name when it takes the folder for another run's


# --- 2. a damaged checkpoint never blocks work ----------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", [truncate, flip_bytes, lambda p: p.write_bytes(b"")], ids=["truncated", "flipped", "empty"]
)
def test_a_damaged_last_checkpoint_is_refused_naming_the_intact_one(
    tmp_path, trained, fashion_root, capsys, monkeypatch, damage
):
    shutil.copytree(trained / "lightning_logs", tmp_path / "lightning_logs")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "lightning_logs/version_0/checkpoints"
    (best,) = folder.glob("best-*.ckpt")
    damage(folder / "last.ckpt")
    before = snapshot(tmp_path, fashion_root)
    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=2", *FAST, *data_flags(fashion_root)]

    line = refused(capsys, [*args, "--ckpt_path=last"])
    assert "lightning_logs/version_0/checkpoints/last.ckpt' is damaged" in line
    assert f"pass --ckpt_path 'lightning_logs/version_0/checkpoints/{best.name}'" in line
    assert snapshot(tmp_path, fashion_root) == before

    # The advice works: training goes on from the intact checkpoint (in a new run folder).
    cli = ResNetCLI(args=[*args, f"--ckpt_path={best}"])
    assert cli.trainer.global_step == 20


@pytest.mark.slow  # trains more than once, or for several epochs
def test_a_crash_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path):
    script = """
import io, os, sys, torch
from resnet_lit.checkpointing import SafeCheckpointIO
path = sys.argv[1]
SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "step": 1}, path)
save = torch.save
def dying_save(obj, f, *args, **kwargs):  # writes half of the new checkpoint, then the process dies
    buffer = io.BytesIO()
    save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[: buffer.tell() // 2])
    f.flush()
    os._exit(9)
torch.save = dying_save
SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(100_000)}, "step": 2}, path)
"""
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True)
    assert result.returncode == 9, result.stderr
    checkpoint = load_checkpoint(path)  # intact, and still the first one
    assert checkpoint["step"] == 1 and not checkpoint["state_dict"]["w"].any()


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {}, "step": 1}, path)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        SafeCheckpointIO().save_checkpoint({"state_dict": {}, "step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# --- 3. untrusted checkpoints run no code ---------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def crafted(tmp_path, trained) -> tuple[Path, Path]:
    """A real checkpoint with a payload that would create `marker` when unpickled, and that marker."""
    marker = tmp_path / "PAYLOAD_RAN"
    checkpoint = torch.load(trained / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["note"] = Payload(f"touch {marker}")
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path, marker


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(crafted, capsys, subcommand, in_tmp):
    path, marker = crafted
    line = refused(capsys, [subcommand, f"--ckpt_path={path}", "--trainer.max_epochs=1", *FAST])
    assert "unpickling it would call posix.system, so it could run code" in line
    assert not marker.exists()
    assert not (in_tmp / "lightning_logs").exists()


def test_resuming_from_a_crafted_last_checkpoint_is_refused(
    crafted, tmp_path, trained, fashion_root, capsys, monkeypatch
):
    path, marker = crafted
    shutil.copytree(trained / "lightning_logs", tmp_path / "lightning_logs")
    shutil.copy(path, tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--ckpt_path=last",
        "--model.arch=resnet8",
        "--trainer.max_epochs=2",
        *FAST,
        *data_flags(fashion_root),
    ]
    line = refused(capsys, args)
    assert "--ckpt_path last: refused checkpoint" in line
    assert not marker.exists()


def test_lightnings_own_checkpoint_loading_is_weights_only(crafted, trained, fashion_root, in_tmp):
    path, marker = crafted
    good = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    cli = ResNetCLI(args=["--model.arch=resnet8", *FAST, *data_flags(fashion_root)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
    with pytest.raises(CheckpointError, match="could run code"):
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(path))
    with pytest.raises(CheckpointError, match="not supported"):
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(good), weights_only=False)
    assert not marker.exists()
    # The payload is live: the unsafe way of loading does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


# --- 4. bad input: one clear line, a non-zero exit, no traceback, nothing changed -----------------

BAD_INPUT = {
    "unknown arch": (["--model.arch=resnet9"], "unknown depth 9 in 'resnet9'"),
    "lr zero": (["--model.lr=0"], "model.lr must be positive and finite, got 0.0"),
    "lr negative": (["--model.lr=-0.1"], "model.lr must be positive and finite, got -0.1"),
    "lr not a number": (["--model.lr=abc"], "--model.lr expects float, got 'abc'"),
    "batch size zero": (["--data.batch_size=0"], "data.batch_size must be positive, got 0"),
    "epochs zero": (["--trainer.max_epochs=0"], "trainer.max_epochs must be positive (or -1 for no limit), got 0"),
    "epochs negative": (
        ["--trainer.max_epochs=-5"],
        "trainer.max_epochs must be positive (or -1 for no limit), got -5",
    ),
    "val_size zero": (["--data.val_size=0"], "data.val_size must be positive, got 0"),
    "val_size negative": (["--data.val_size=-1"], "data.val_size must be positive, got -1"),
    "val_size >= training set": (["--data.val_size=600"], "data.val_size must be smaller than the 600 training images"),
    "unknown option": (["--model.depth=20"], "unrecognized arguments: --model.depth=20"),
    "missing data": (["--data.data_dir=nowhere"], "Fashion-MNIST is not in 'nowhere/FashionMNIST/raw'"),
    "data_dir is a file": (
        ["--data.data_dir=lightning_logs/version_0/config.yaml"],
        "data.data_dir 'lightning_logs/version_0/config.yaml' is a file",
    ),
    "missing checkpoint": (["--ckpt_path=nothere.ckpt"], "--ckpt_path 'nothere.ckpt': no such file"),
    "batch larger than the training set": (["--data.batch_size=501"], "data.batch_size 501 is more than the 500"),
    "val_size leaves less than a batch": (
        ["--data.val_size=560"],
        "data.batch_size 50 is more than the 40 training images left after data.val_size 560",
    ),
    "weights_only false": (["--weights_only=false"], "--weights_only false would let a checkpoint run code"),
}


@pytest.mark.parametrize("extra, expected", BAD_INPUT.values(), ids=BAD_INPUT)
def test_bad_input_is_one_line_and_changes_nothing(trained, fashion_root, capsys, monkeypatch, extra, expected):
    monkeypatch.chdir(trained)
    before = snapshot(trained, fashion_root)
    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=1", *FAST, *data_flags(fashion_root), *extra]
    assert refused(capsys, args).startswith(f"error: {expected}")  # what is wrong comes first
    assert snapshot(trained, fashion_root) == before  # no new version_N, no file touched


def write_idx_header(path: Path, *dims: int) -> None:
    data = bytearray(path.read_bytes())
    data[: 4 + 4 * len(dims)] = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    path.write_bytes(bytes(data))


DAMAGED_DATA = {
    "truncated images": ("train-images-idx3-ubyte", truncate, "is truncated"),
    "empty labels": ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(b""), "is not an IDX file"),
    "not an IDX file": ("train-images-idx3-ubyte", lambda p: p.write_bytes(b"<html>404</html>" * 100), "is not an IDX"),
    "counts disagree": (
        "train-labels-idx1-ubyte",
        lambda p: (p.write_bytes(p.read_bytes()[:408]), write_idx_header(p, 400)),
        "holds 600 images but",
    ),
    "label out of range": (
        "train-labels-idx1-ubyte",
        lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x0c"),
        "label 12",
    ),
}


@pytest.mark.parametrize("name, damage, expected", DAMAGED_DATA.values(), ids=DAMAGED_DATA)
def test_damaged_data_files_are_named_in_one_line(tmp_path, fashion_root, capsys, in_tmp, name, damage, expected):
    root = tmp_path / "data"
    shutil.copytree(fashion_root, root)
    damage(root / "FashionMNIST/raw" / name)
    before = snapshot(root)
    line = refused(capsys, ["fit", "--model.arch=resnet8", "--trainer.max_epochs=1", *FAST, *data_flags(root)])
    assert expected in line and name in line
    assert snapshot(root) == before
    assert not (in_tmp / "lightning_logs").exists()


def test_a_checkpoint_of_another_network_with_an_explicit_config_is_refused(trained, fashion_root, capsys, in_tmp):
    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    before = snapshot(trained)
    for subcommand in ("test", "fit"):
        args = [subcommand, f"--config={REPO / 'configs/r20.yaml'}", f"--ckpt_path={ckpt}", *data_flags(fashion_root)]
        line = refused(capsys, [*args, *FAST])
        assert "holds a different network than the config asks for: arch='resnet20' (checkpoint: 'resnet8')" in line
    assert snapshot(trained) == before
    assert not (in_tmp / "lightning_logs").exists()


@pytest.mark.parametrize(
    "mode, size, described", [("L", 32, "32x32 with 1 channel(s)"), ("RGB", 28, "28x28 with 3 channel(s)")]
)
def test_predict_on_images_of_the_wrong_shape_says_what_was_expected(
    trained, tmp_path, capsys, in_tmp, mode, size, described
):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new(mode, (size, size)).save(folder / "a.png")
    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    line = refused(capsys, ["predict", f"--ckpt_path={ckpt}", f"--data.predict_dir={folder}", *FAST])
    assert f"is {described}; this model expects 28x28 with 1 channel(s)" in line
    assert not (in_tmp / "lightning_logs").exists()


def test_the_debug_switch_shows_the_traceback(in_tmp, fashion_root, monkeypatch):
    monkeypatch.setenv("RESNET_LIT_DEBUG", "1")
    with pytest.raises(ValueError, match=r"model\.lr must be positive"):
        main(["fit", "--model.lr=0", *data_flags(fashion_root)])


def test_help_still_prints_and_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0
    assert "--model.lr" in capsys.readouterr().out


# --- 5. a non-finite loss stops the run and keeps the last good checkpoint -------------------------


@pytest.mark.slow  # trains more than once, or for several epochs
def test_a_diverging_run_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(in_tmp, fashion_root, capsys):
    # lr 0.1 for the first epoch, then x 1e7 (lr 1e6): the loss blows up in the second epoch.
    schedule = ["--model.schedule=step", "--model.interval=epoch", "--model.step_size=1", "--model.gamma=1e7"]
    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=3", *schedule, *FAST, *data_flags(fashion_root)]
    line = refused(capsys, args, status=1)
    last = in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert re.search(r"the training loss is (nan|inf|-inf) at step 1\d \(epoch 1\) with lr 1e\+06", line), line
    assert f"the last good checkpoint, {last}, is kept" in line
    checkpoint = load_checkpoint(last)
    assert checkpoint["global_step"] == 10  # the end of the first epoch, not overwritten
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())
    assert all(load_checkpoint(p)["global_step"] == 10 for p in last.parent.glob("*.ckpt"))


class PoisonStep(Callback):
    """Makes the loss of one step NaN (its input batch all NaN) and records the state around it.

    `before` and `after`: the parameters; `momentum_before` and `momentum_after`: the optimizer's
    momentum buffers (none before the first step).
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.momentum_before: dict[str, torch.Tensor] = {}
        self.momentum_after: dict[str, torch.Tensor] = {}

    @staticmethod
    def _momentum(trainer, pl_module) -> dict[str, torch.Tensor]:
        state = trainer.optimizers[0].state
        return {k: state[p]["momentum_buffer"].clone() for k, p in pl_module.named_parameters() if p in state}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.before = {k: v.detach().clone() for k, v in pl_module.named_parameters()}
            self.momentum_before = self._momentum(trainer, pl_module)
            batch[0].fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step + 1:
            self.after = {k: v.detach().clone() for k, v in pl_module.named_parameters()}
            self.momentum_after = self._momentum(trainer, pl_module)


@pytest.mark.slow  # trains more than once, or for several epochs
def test_a_nan_between_logging_steps_skips_its_update_and_is_named_at_the_next_check(in_tmp, fashion_root):
    # Logging every 50 steps: the guard reads its flags on the host only at the end of the epoch
    # (step 20), but the bad step 12 changed nothing and is the one named.
    args = [
        "--model.arch=resnet8",
        "--trainer.max_epochs=3",
        "--trainer.log_every_n_steps=50",
        *data_flags(fashion_root),
    ]
    cli = ResNetCLI(args=[*args, "--trainer.enable_progress_bar=false"], run=False)
    poison = PoisonStep(step=12)
    cli.trainer.callbacks.append(poison)
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step 12 \(epoch 1\) with lr 0\.1"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert poison.before and poison.after
    assert_identical(poison.after, poison.before)  # the fused optimizer skipped the update on the device
    assert poison.momentum_before and len(poison.momentum_after) == len(poison.momentum_before)
    assert_identical(poison.momentum_after, poison.momentum_before)  # and left its momentum as it was
    # What the docstring says is not kept: the bad forward pass moved BatchNorm's running statistics.
    assert not torch.isfinite(cli.model.net.bn1.running_mean).all()
    assert cli.trainer.global_step == 20  # noticed at the end of the epoch, before validation and the checkpoint
    last = in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert load_checkpoint(last)["global_step"] == 10  # nothing saved after the bad step


def test_under_16_mixed_the_grad_scaler_skips_the_bad_step_and_the_guard_stops(tmp_path, fashion_root):
    # 16-mixed: torch.amp.GradScaler hands the fused optimizer its own found_inf (from the
    # gradients, which a non-finite loss makes non-finite), replacing the guard's. Lightning runs
    # 16-mixed on GPUs only; the CPU's GradScaler takes the same path.
    from lightning.pytorch import Trainer
    from lightning.pytorch.plugins import MixedPrecision

    from resnet_lit import FashionMNISTDataModule
    from resnet_lit.callbacks import StopOnNonFiniteLoss

    model = ResNetClassifier(arch="resnet8")
    data = FashionMNISTDataModule(data_dir=str(fashion_root), download=False, val_size=100, batch_size=50, seed=0)
    poison, scaler = PoisonStep(step=3), torch.amp.GradScaler("cpu")
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=8,
        log_every_n_steps=50,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[StopOnNonFiniteLoss(), poison],
    )
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step 3 \(epoch 0\)"):
        trainer.fit(model, data)
    assert trainer.optimizers[0].defaults["fused"]
    assert_identical(poison.after, poison.before)  # the scaler skipped the update
    assert scaler.get_scale() == 2.0**15  # and halved its scale (from 2**16) once: it saw the inf itself
    assert not hasattr(trainer.optimizers[0], "found_inf")  # nothing of the guard's left on the optimizer


# --- predict reads every image mode as what it shows -------------------------------------------------


def grey_modes(folder: Path) -> dict[str, str]:
    """Images in several modes, each beside an 8-bit grey (L) image of the grey levels it shows."""
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    pairs = {}
    # A palette image: its pixels are indices into a palette of greys (the indices are not the levels).
    order = rng.permutation(256).astype(np.uint8)
    palette = Image.fromarray(np.argsort(order)[levels].astype(np.uint8), "P")
    palette.putpalette(np.repeat(np.arange(256, dtype=np.uint8)[order], 3).tolist())
    for name, image, shown in (
        ("palette.png", palette, levels),
        ("palette.gif", palette, levels),
        ("bilevel.png", Image.fromarray(levels).convert("1", dither=Image.Dither.NONE), None),
        ("opaque_alpha.png", Image.merge("LA", (Image.fromarray(levels), Image.new("L", (28, 28), 255))), levels),
    ):
        image.save(folder / name)
        shown = shown if shown is not None else np.asarray(image.convert("L"))
        Image.fromarray(shown, "L").save(folder / f"{name}.as_grey.png")
        pairs[name] = f"{name}.as_grey.png"
    return pairs


def test_predict_reads_every_image_mode_as_the_grey_levels_it_shows(trained, tmp_path, in_tmp):
    folder = tmp_path / "images"
    folder.mkdir()
    pairs = grey_modes(folder)
    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    args = ["predict", f"--ckpt_path={ckpt}", f"--data.predict_dir={folder}", "--predictions.path=out.csv", *FAST]
    ResNetCLI(args=args)
    with open(in_tmp / "out.csv") as f:
        rows = {Path(row["source"]).name: (row["predicted"], row["confidence"]) for row in csv.DictReader(f)}
    assert len(rows) == 2 * len(pairs)
    for image, grey in pairs.items():
        assert rows[image] == rows[grey], image  # the same input as its grey twin: the same prediction


UNREADABLE = {
    "a colour palette": (lambda: Image.new("P", (28, 28), 1), "is 28x28 with 3 channel(s)"),
    "transparent pixels": (lambda: Image.new("LA", (28, 28), (128, 0)), "has transparent pixels"),
    "16-bit pixels": (lambda: Image.new("I;16", (28, 28), 1000), "pixels (16-bit, 32-bit or float)"),
}


@pytest.mark.parametrize("make, expected", UNREADABLE.values(), ids=UNREADABLE)
def test_predict_refuses_images_it_cannot_read_as_grey_levels(trained, tmp_path, capsys, in_tmp, make, expected):
    folder = tmp_path / "images"
    folder.mkdir()
    image = make()
    if image.mode == "P":
        image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)  # index 1: red
    image.save(folder / "a.png")
    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    line = refused(capsys, ["predict", f"--ckpt_path={ckpt}", f"--data.predict_dir={folder}", *FAST])
    assert expected in line
    assert not (in_tmp / "lightning_logs").exists()


def test_predict_refuses_an_animated_gif(trained, tmp_path, capsys, in_tmp):
    folder = tmp_path / "images"
    folder.mkdir()
    frames = [Image.new("L", (28, 28), level) for level in (0, 255)]
    frames[0].save(folder / "a.gif", save_all=True, append_images=frames[1:])
    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    line = refused(capsys, ["predict", f"--ckpt_path={ckpt}", f"--data.predict_dir={folder}", *FAST])
    assert "is animated (2 frames)" in line


# --- the disk, downloads and signals outside fit ----------------------------------------------------


@pytest.mark.slow  # trains more than once, or for several epochs
def test_a_full_disk_while_saving_ends_in_one_line_and_keeps_the_previous_checkpoints(
    tmp_path, trained, fashion_root, capsys, monkeypatch
):
    shutil.copytree(trained / "lightning_logs", tmp_path / "lightning_logs")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path / "lightning_logs/version_0/checkpoints")
    save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # what torch's writer raises when a write fails
        save(obj, f, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 167744 vs 167640")

    monkeypatch.setattr(torch, "save", full_disk)
    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=2", "--ckpt_path=last", *FAST]
    line = refused(capsys, [*args, *data_flags(fashion_root)], status=1)
    # the first save of the resumed epoch fails: the best checkpoint or last.ckpt, whichever comes first
    assert re.search(r"could not write \(\S+/version_0/checkpoints/\S+\.ckpt\): the write failed", line), line
    assert "is the disk full?" in line
    assert snapshot(tmp_path / "lightning_logs/version_0/checkpoints") == before  # no temporary file either


def test_a_failed_download_leaves_no_folder_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def offline(self):
        Path(self.raw_folder).mkdir(parents=True, exist_ok=True)  # as torchvision does before fetching
        raise OSError("Error downloading train-images-idx3-ubyte.gz: Name or service not known")

    monkeypatch.setattr(FashionMNIST, "download", offline)
    line = refused(capsys, ["fit", "--data.data_dir=new/data", "--data.download=true", *FAST])
    assert "Fashion-MNIST is not in 'new/data/FashionMNIST/raw' and it could not be downloaded" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # three short subprocess runs
@pytest.mark.parametrize(
    "subcommand, signal_name, status",
    [("test", "SIGTERM", 143), ("predict", "SIGTERM", 143), ("predict", "SIGINT", 130)],
)
def test_a_signal_during_test_or_predict_stops_it_and_leaves_no_half_file(
    tmp_path, trained, subcommand, signal_name, status
):
    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    signal_at = ["--trainer.callbacks+=processes.SignalAtBatch", f"--trainer.callbacks.signal_name={signal_name}"]
    args = [subcommand, f"--ckpt_path={ckpt}", "--predictions.path=out.csv", *FAST, *signal_at]
    process = run_module(args, cwd=tmp_path)
    output = finish(process)
    assert process.returncode == status, output
    assert "Traceback" not in output
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob(".*.partial"))


def test_a_bug_is_a_traceback_not_a_refusal(in_tmp, fashion_root, monkeypatch):
    # A ValueError from deep in a library is not the user's mistake: no one-line "bad input", exit 2.
    def broken(self, batch, batch_idx):
        raise ValueError("an internal error, not bad input")

    monkeypatch.setattr(ResNetClassifier, "training_step", broken)
    with pytest.raises(ValueError, match="an internal error"):
        main(["fit", "--model.arch=resnet8", "--trainer.max_epochs=1", *FAST, *data_flags(fashion_root)])
