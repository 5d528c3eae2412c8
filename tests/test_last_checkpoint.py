"""last.ckpt: written by its own ModelCheckpoint after every epoch, and found by one lookup (resnet_lit.runs)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import FAST, data_flags, refused

from resnet_lit.callbacks import LastCheckpoint
from resnet_lit.checkpointing import load_checkpoint
from resnet_lit.cli import ResNetCLI
from resnet_lit.runs import newest_checkpoint, newest_run


def fit(root: Path, *extra: str, epochs: int = 1) -> ResNetCLI:
    args = ["fit", "--model.arch=resnet8", f"--trainer.max_epochs={epochs}", *FAST]
    return ResNetCLI(args=[*args, *data_flags(root), *extra])


def checkpoint_states(path: Path) -> dict[str, dict]:
    return load_checkpoint(path)["callbacks"]


# --- the one lookup -------------------------------------------------------------------------------


def write_run(root: Path, version: int, best: str | None = None) -> Path:
    """A run folder with a last.ckpt whose ModelCheckpoint state records `best` (a file written beside it)."""
    checkpoints = root / "lightning_logs" / f"version_{version}" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = {"ModelCheckpoint{'monitor': 'val/acc'}": {"best_model_path": f"/elsewhere/checkpoints/{best}"}}
    torch.save({"state_dict": {}, "callbacks": state if best else {}}, checkpoints / "last.ckpt")
    if best:
        torch.save({"state_dict": {}}, checkpoints / best)
    return checkpoints


def test_the_newest_run_with_a_last_checkpoint_is_found_with_its_best(tmp_path):
    write_run(tmp_path, 0, best="best-epoch=001.ckpt")
    new = write_run(tmp_path, 3, best="best-epoch=004.ckpt")
    (tmp_path / "lightning_logs" / "version_5").mkdir()  # a newer run that wrote no last.ckpt yet

    run = newest_run(tmp_path)
    assert (run.folder, run.last) == (new.parent, new / "last.ckpt")
    # The best is looked up by name beside last.ckpt: the folder it was recorded in has moved.
    assert run.best() == new / "best-epoch=004.ckpt"
    assert newest_checkpoint(tmp_path, "last") == new / "last.ckpt"
    assert newest_checkpoint(tmp_path, "best") == new / "best-epoch=004.ckpt"


def test_a_run_recording_no_best_and_a_root_without_runs_give_none(tmp_path):
    assert newest_run(tmp_path) is None and newest_checkpoint(tmp_path, "last") is None
    write_run(tmp_path, 0)
    assert newest_run(tmp_path).best() is None


# --- the save on a signal ---------------------------------------------------------------------------


class RecordingTrainer(SimpleNamespace):
    def save_checkpoint(self, path) -> None:
        self.saved.append(Path(path))


def test_the_save_on_a_signal_skips_a_step_last_ckpt_already_holds(tmp_path):
    last = LastCheckpoint(dirpath=str(tmp_path))
    trainer = RecordingTrainer(global_step=10, saved=[])
    assert last.save_now(trainer) == tmp_path / "last.ckpt"  # nothing written at any step yet
    last.best_model_score = torch.tensor(10)  # what Lightning records when it writes last.ckpt at step 10
    last.save_now(trainer)
    trainer.global_step = 13
    last.save_now(trainer)
    assert trainer.saved == [tmp_path / "last.ckpt", tmp_path / "last.ckpt"]  # at no step, and at 13; not at 10 again


# --- through the command line ------------------------------------------------------------------------


def test_last_checkpoint_keeps_no_state_and_follows_the_checkpoint_folder(in_tmp, fashion_root):
    cli = fit(fashion_root, "--checkpoint.dirpath=elsewhere")
    folder = in_tmp / "elsewhere"
    assert (folder / "last.ckpt").is_file() and list(folder.glob("best-epoch=000-*.ckpt"))
    assert not (in_tmp / "lightning_logs" / "version_0" / "checkpoints").exists()
    # The best checkpoint callback is the trainer's first (fit's summary, --ckpt_path best), and
    # the only state in last.ckpt, under Lightning's own key.
    assert cli.trainer.checkpoint_callback.monitor == "val/acc"
    (key,) = checkpoint_states(folder / "last.ckpt")
    assert key.startswith("ModelCheckpoint{'monitor': 'val/acc'")


def test_last_checkpoint_stays_a_full_checkpoint_where_the_best_ones_are_weights_only(in_tmp, fashion_root):
    fit(fashion_root, "--checkpoint.save_weights_only=true")
    checkpoints = in_tmp / "lightning_logs" / "version_0" / "checkpoints"
    (best,) = checkpoints.glob("best-*.ckpt")
    assert "optimizer_states" not in load_checkpoint(best)
    last = load_checkpoint(checkpoints / "last.ckpt")
    assert last["optimizer_states"] and last["loops"]  # what fit --ckpt_path last resumes from


def test_save_last_false_writes_only_the_best_and_link_is_refused(in_tmp, fashion_root, capsys):
    fit(fashion_root, "--checkpoint.save_last=false")
    checkpoints = in_tmp / "lightning_logs" / "version_0" / "checkpoints"
    assert [p.name[:15] for p in checkpoints.iterdir()] == ["best-epoch=000-"]

    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=1", "--checkpoint.save_last=link"]
    line = refused(capsys, [*args, *data_flags(fashion_root)])
    assert "--checkpoint.save_last link is not supported" in line and "use true or false" in line
    assert sorted(p.name for p in (in_tmp / "lightning_logs").iterdir()) == ["version_0"]


@pytest.mark.slow  # trains more than once
def test_a_last_checkpoint_in_the_earlier_format_resumes(in_tmp, fashion_root):
    # Before LastCheckpoint, the best checkpoint callback wrote last.ckpt itself and recorded it as
    # its last_model_path; only its state was in the file. Such a checkpoint goes on as before.
    fit(fashion_root, epochs=1)
    last = in_tmp / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(last)
    (state,) = checkpoint["callbacks"].values()
    state["last_model_path"] = str(last)
    torch.save(checkpoint, last)

    resumed = fit(fashion_root, "--ckpt_path=last", epochs=2)
    assert resumed.trainer.global_step == 20
    assert load_checkpoint(last)["global_step"] == 20
    assert not list(last.parent.glob("last-v*.ckpt"))
