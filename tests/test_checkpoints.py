"""What a checkpoint may decide, what a resumed run may change, and which checkpoint `last` and `best` name.

Through the product's entry point (`main`, `ResNetCLI`), as in tests/test_reliability.py.
"""

import shutil
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAST, data_flags, refused, snapshot
from processes import finish, run_module
from torchvision.datasets import FashionMNIST

from resnet_lit.checkpointing import load_checkpoint
from resnet_lit.cli import ResNetCLI
from resnet_lit.runs import claim_version


def fit(*extra: str, epochs: int = 1) -> ResNetCLI:
    return ResNetCLI(args=["fit", "--model.arch=resnet8", f"--trainer.max_epochs={epochs}", *FAST, *extra])


def copy_run(trained: Path, to: Path) -> Path:
    shutil.copytree(trained / "lightning_logs", to / "lightning_logs")
    return to / "lightning_logs/version_0/checkpoints/last.ckpt"


def forged(trained: Path, to: Path, edit) -> Path:
    """A weights-only checkpoint made from a real one by `edit(checkpoint)`."""
    checkpoint = torch.load(trained / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    edit(checkpoint)
    path = to / "forged.ckpt"
    torch.save(checkpoint, path)
    return path


# --- a checkpoint chooses no code and no paths ------------------------------------------------------


def test_a_checkpoint_naming_a_module_to_import_is_refused_and_nothing_is_imported(tmp_path, trained, capsys, in_tmp):
    package = tmp_path / "elsewhere"
    package.mkdir()
    marker = tmp_path / "IMPORTED"
    (package / "evil_data.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Data: pass\n")
    sys.path.insert(0, str(package))  # importable, as any module on the user's path would be
    chosen = tmp_path / "chosen" / "by" / "the" / "checkpoint"

    def point_elsewhere(checkpoint):
        checkpoint["datamodule_hyper_parameters"].update(_class_path="evil_data.Data", data_dir=str(chosen))

    path = forged(trained, tmp_path, point_elsewhere)
    try:
        for subcommand in ("test", "validate", "predict", "fit"):
            line = refused(capsys, [subcommand, f"--ckpt_path={path}", *FAST])
            assert "names the data class 'evil_data.Data', which is not one of resnet_lit's" in line
    finally:
        sys.path.remove(str(package))
    assert not marker.exists() and "evil_data" not in sys.modules
    assert not (tmp_path / "chosen").exists() and not (in_tmp / "lightning_logs").exists()


def test_a_data_folder_from_a_checkpoint_is_used_only_where_it_exists_and_never_downloaded_into(
    tmp_path, trained, fashion_root, capsys, in_tmp, monkeypatch
):
    downloads = []
    monkeypatch.setattr(FashionMNIST, "download", lambda self: downloads.append(self.root))
    chosen = tmp_path / "chosen"
    path = forged(trained, tmp_path, lambda c: c["datamodule_hyper_parameters"].update(data_dir=str(chosen)))
    line = refused(capsys, ["test", f"--ckpt_path={path}", *FAST])
    assert f"was trained on data in {str(chosen)!r}, which does not exist here: give" in line
    assert "--data.data_dir" in line
    assert not chosen.exists() and not downloads and not (in_tmp / "lightning_logs").exists()

    # With the folder named, the checkpoint evaluates; where the checkpoint's folder exists, it is used.
    cli = ResNetCLI(args=["test", f"--ckpt_path={path}", f"--data.data_dir={fashion_root}", *FAST])
    assert cli.trainer.callback_metrics["test/acc"] >= 0
    ResNetCLI(args=["test", f"--ckpt_path={trained / 'lightning_logs/version_0/checkpoints/last.ckpt'}", *FAST])
    assert not downloads


FOREIGN = {
    "a bare state_dict": (lambda c: c.pop("hyper_parameters"), "it names no network"),
    "another module's hyperparameters": (
        lambda c: c.update(hyper_parameters={"arch": "resnet8", "hidden_dim": 64, "dropout": 0.1}),
        "its hyperparameters dropout, hidden_dim are not ResNetClassifier's",
    ),
    "a partial state_dict": (
        lambda c: c["state_dict"].pop("net.fc.weight"),
        "does not fit the resnet8 it describes: its state_dict lacks 1 tensor(s) (net.fc.weight)",
    ),
    "tensors of another shape": (
        lambda c: c["state_dict"].update({"net.fc.bias": torch.zeros(3)}),
        "has other shapes for 1 tensor(s) (net.fc.bias)",
    ),
    # what Lightning's checkpoint migration would end on in a traceback, with a run folder left
    "a Lightning 1 checkpoint": (
        lambda c: c.update({"pytorch-lightning_version": "1.0.0"}),
        "was written by Lightning 1.0.0; resnet_lit's checkpoints come from Lightning 2 on",
    ),
    "a malformed Lightning version": (
        lambda c: c.update({"pytorch-lightning_version": "two point six"}),
        "records Lightning version 'two point six', which is not a version",
    ),
    "no Lightning version": (
        lambda c: c.pop("pytorch-lightning_version"),
        "records no Lightning version (pytorch-lightning_version)",
    ),
}


@pytest.mark.parametrize("edit, expected", FOREIGN.values(), ids=FOREIGN)
@pytest.mark.parametrize("subcommand", ["test", "fit"])
def test_checkpoints_of_other_modules_and_partial_ones_are_refused_in_one_line(
    tmp_path, trained, fashion_root, capsys, in_tmp, edit, expected, subcommand
):
    path = forged(trained, tmp_path, edit)
    line = refused(capsys, [subcommand, f"--ckpt_path={path}", *FAST, *data_flags(fashion_root)])
    assert expected in line
    assert not (in_tmp / "lightning_logs").exists()


# --- last and best; never random weights without asking ---------------------------------------------


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_last_or_best_takes_the_newest_runs_checkpoint(subcommand, tmp_path, trained, monkeypatch):
    copy_run(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    explicit = ResNetCLI(args=[subcommand, "--ckpt_path=lightning_logs/version_0/checkpoints/last.ckpt", *FAST])
    for which in ("last", "best"):
        cli = ResNetCLI(args=[subcommand, f"--ckpt_path={which}", *FAST])
        checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
        expected = "last.ckpt" if which == "last" else next(checkpoints.glob("best-*.ckpt")).name
        assert Path(cli.trainer.ckpt_path).name == expected
        if subcommand != "predict":
            assert cli.trainer.callback_metrics.keys() == explicit.trainer.callback_metrics.keys()
    assert not (tmp_path / "lightning_logs/version_0/checkpoints/last-v1.ckpt").exists()


def test_best_where_the_newest_run_records_none_is_refused_naming_that_run(tmp_path, trained, monkeypatch, capsys):
    copy_run(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    # A newer run stopped before its first validation: a last.ckpt whose ModelCheckpoint has no best.
    newer = tmp_path / "lightning_logs/version_1/checkpoints"
    newer.mkdir(parents=True)
    checkpoint = load_checkpoint(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    checkpoint["callbacks"] = {}
    torch.save(checkpoint, newer / "last.ckpt")
    line = refused(capsys, ["test", "--ckpt_path=best", *FAST])
    assert "--ckpt_path best: the newest run, lightning_logs/version_1, records no best checkpoint" in line
    assert "give a checkpoint file" in line


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_without_trained_weights_is_refused_unless_asked_for(subcommand, in_tmp, data_args, capsys):
    line = refused(capsys, [subcommand, "--ckpt_path=last", *FAST, *data_args])
    assert f"--ckpt_path last: no lightning_logs/version_*/checkpoints/last.ckpt to {subcommand}" in line
    line = refused(capsys, [subcommand, *FAST, *data_args])
    assert f"{subcommand} needs trained weights: give --ckpt_path" in line
    assert not (in_tmp / "lightning_logs").exists()
    ResNetCLI(args=[subcommand, "--ckpt_path=untrained", "--model.arch=resnet8", *FAST, *data_args])  # asked for


# --- what a resumed run may change ------------------------------------------------------------------

CHANGES = {
    "another learning rate": (["--model.lr=0.01"], "model.lr=0.01 (checkpoint: 0.1)"),
    "another network": (["--model.arch=resnet14"], "holds a different network than the options ask for: arch="),
    "another batch size": (["--data.batch_size=25"], "data.batch_size=25 (checkpoint: 50)"),
    "another seed": (["--data.seed=3"], "data.seed=3 (checkpoint: 0)"),
}


@pytest.mark.parametrize("extra, expected", CHANGES.values(), ids=CHANGES)
def test_a_resume_that_would_change_what_is_trained_is_refused_before_anything_is_written(
    tmp_path, trained, fashion_root, capsys, monkeypatch, extra, expected
):
    copy_run(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    args = ["fit", "--ckpt_path=last", "--trainer.max_epochs=2", *FAST, *data_flags(fashion_root)]
    line = refused(capsys, [*args, *extra])  # the later option wins
    assert expected in line
    assert snapshot(tmp_path) == before  # config.yaml still describes what ran


@pytest.mark.slow  # trains more than once, or for several epochs
def test_a_resume_may_change_speed_settings_and_its_config_says_what_ran(tmp_path, trained, fashion_root, monkeypatch):
    copy_run(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--ckpt_path=last", "--trainer.max_epochs=2", "--model.channels_last=false", *FAST]
    cli = ResNetCLI(args=[*args, *data_flags(fashion_root)])
    assert cli.trainer.global_step == 20
    config = yaml.safe_load((tmp_path / "lightning_logs/version_0/config.yaml").read_text())
    assert config["model"]["channels_last"] is False and config["trainer"]["max_epochs"] == 2
    assert config["model"]["lr"] == 0.1 and config["data"]["init_args"]["seed"] == 0  # the seed is named


@pytest.mark.slow  # trains more than once, or for several epochs
def test_fit_ckpt_path_last_alone_continues_the_run_as_it_was(tmp_path, trained, fashion_root, monkeypatch):
    copy_run(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    cli = ResNetCLI(
        args=["fit", "--ckpt_path=last", "--trainer.max_epochs=2", *FAST, f"--data.data_dir={fashion_root}"]
    )
    assert cli.model.hparams.arch == "resnet8" and cli.datamodule.hparams.batch_size == 50  # the checkpoint's
    assert cli.trainer.global_step == 20


@pytest.mark.slow  # trains more than once, or for several epochs
def test_a_schedule_that_spans_the_run_may_not_be_stretched_on_resume(in_tmp, data_args, capsys):
    fit("--model.schedule=cosine", *data_args)
    line = refused(capsys, ["fit", "--ckpt_path=last", "--trainer.max_epochs=3", *FAST, *data_args])
    assert "trainer.max_epochs=3 (checkpoint: 1; the cosine schedule spans the run)" in line


@pytest.mark.slow  # trains more than once, or for several epochs
def test_a_moved_run_folder_resumes_in_place(tmp_path, data_args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit("--trainer.default_root_dir=before", *data_args)
    (tmp_path / "before").rename(tmp_path / "after")
    (tmp_path / "after/lightning_logs/version_0").rename(tmp_path / "after/lightning_logs/version_7")
    for epochs in (2, 3):
        cli = fit("--trainer.default_root_dir=after", "--ckpt_path=last", *data_args, epochs=epochs)
        assert cli.trainer.global_step == 10 * epochs  # each resume went on from the newest state
    checkpoints = tmp_path / "after/lightning_logs/version_7/checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 30
    assert not list(checkpoints.glob("last-v*.ckpt"))
    assert sorted(p.name for p in (tmp_path / "after/lightning_logs").iterdir()) == ["version_7"]


# --- one folder per run --------------------------------------------------------------------------


def test_runs_claiming_a_folder_at_the_same_moment_each_get_their_own(tmp_path):
    claimed, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        claimed.append(claim_version(tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(8))


@pytest.mark.slow  # two short subprocess runs at once
def test_two_fits_started_at_once_in_one_folder_each_get_a_complete_run_folder(tmp_path, fashion_root):
    args = ["fit", "--model.arch=resnet8", "--trainer.max_epochs=1", *FAST, *data_flags(fashion_root)]
    processes = [run_module([*args, f"--model.lr={lr}"], cwd=tmp_path) for lr in (0.1, 0.05)]
    for process in processes:
        output = finish(process)
        assert process.returncode == 0, output
    runs = sorted((tmp_path / "lightning_logs").iterdir())
    assert [run.name for run in runs] == ["version_0", "version_1"]
    lrs = set()
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        hparams = yaml.safe_load((run / "hparams.yaml").read_text())
        (best,) = (run / "checkpoints").glob("best-*.ckpt")
        saved = {load_checkpoint(p)["hyper_parameters"]["lr"] for p in (best, run / "checkpoints/last.ckpt")}
        assert saved == {config["model"]["lr"]} == {hparams["lr"]}  # each folder holds one run only
        assert not list((run / "checkpoints").glob("*-v1.ckpt"))
        lrs.add(config["model"]["lr"])
    assert lrs == {0.1, 0.05}
