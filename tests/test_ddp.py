"""More than one process: DDP on CPU (gloo) through `python -m resnet_lit`, as users launch it.

With `strategy: ddp` Lightning starts the other processes by re-running the command line, so
the runs here are subprocesses. The evaluation sets have odd sizes, so a sampler that pads them
to a multiple of two processes would count an image twice.
"""

import json
from pathlib import Path

import pytest
from conftest import write_fashion_mnist
from helpers import scalars
from processes import finish, run_module

DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
QUIET = ["--trainer.enable_progress_bar=false"]


def logged(run: Path, tag: str) -> float:
    (value,) = [v for _, v in scalars(run)[tag]]
    return value


def run(args: list[str], cwd: Path) -> str:
    process = run_module(args, cwd=cwd)
    output = finish(process)
    assert process.returncode == 0, output
    return output


@pytest.mark.slow  # three subprocess runs, two of them with two processes: about a minute on 2 cores
def test_ddp_on_two_processes_counts_every_evaluation_image_once(tmp_path):
    root = write_fashion_mnist(tmp_path / "data", n_train=600, n_test=201)  # 201 and 101: odd on purpose
    data = [f"--data.data_dir={root}", "--data.download=false", "--data.val_size=101", "--data.batch_size=50"]
    record = ["--trainer.callbacks+=processes.RecordMetrics"]
    run(["fit", "--model.arch=resnet8", "--trainer.max_epochs=1", *DDP, *QUIET, *data, *record], cwd=tmp_path)
    ranks = [json.loads((tmp_path / f"metrics_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every process has the same val/loss and val/acc: synced, not its own share
    logs = tmp_path / "lightning_logs"
    ckpt = logs / "version_0/checkpoints/last.ckpt"
    assert ckpt.is_file()

    run(["test", f"--ckpt_path={ckpt}", *DDP, *QUIET], cwd=tmp_path)  # version_1
    run(["test", f"--ckpt_path={ckpt}", *QUIET], cwd=tmp_path)  # version_2, one process
    ddp_acc, single_acc = logged(logs / "version_1", "test/acc"), logged(logs / "version_2", "test/acc")
    assert ddp_acc == single_acc
    # A count out of 201, not 202 (one image padded in twice): k / 202 is no count out of 201 for
    # any 0 < k < 202, but 0 and 1 are counts out of both, so the run's accuracy must lie between.
    assert 0 < ddp_acc < 1, ddp_acc
    assert (ddp_acc * 201) == pytest.approx(round(ddp_acc * 201), abs=1e-4)

    # The validation during the two-process fit saw each of the 101 images once, too: its accuracy
    # and its loss (the mean over every image) are the single process's.
    run(["validate", f"--ckpt_path={ckpt}", *QUIET], cwd=tmp_path)  # version_3, one process
    assert logged(logs / "version_0", "val/acc") == logged(logs / "version_3", "val/acc")
    assert ranks[0]["val/loss"] == pytest.approx(logged(logs / "version_3", "val/loss"), rel=1e-5)
