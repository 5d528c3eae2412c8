"""On a real SLURM: the sweep as a job array (with a requeue in the middle), DDP under srun.

These need a running SLURM whose node takes jobs (`bash .ci/slurm.sh start`, as root, starts a
one-node one here); without one they are skipped. The jobs run as real processes of this
checkout: PYTHONPATH carries it (and tests/, for the callbacks) into them, as sbatch passes the
submitting environment on.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from helpers import assert_identical, scalars, weights
from processes import REPO, finish, run_module
from test_sweep import write_config

from resnet_lit import sweep


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return states.returncode == 0 and any(s.strip() in ("idle", "mixed", "allocated") for s in states.stdout.split())


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not _slurm_answers(), reason="no SLURM node takes jobs here (start one: bash .ci/slurm.sh start)"
    ),
]


@pytest.fixture
def job_env(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def queued(*jobs: str) -> list[str]:
    """The jobs (and array tasks) of `jobs` still in SLURM's queue."""
    listed = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(jobs)], capture_output=True, text=True)
    return listed.stdout.split("\n") if listed.stdout.strip() else []


@pytest.mark.slow  # 4 runs as array tasks (two of them twice), a report job, then the same 4 runs locally
def test_a_sweep_as_a_job_array_survives_a_requeue_and_ends_as_the_local_sweep(
    tmp_path, data_args, monkeypatch, capsys, job_env
):
    monkeypatch.chdir(tmp_path)
    configs = [write_config(tmp_path, "r8", "resnet8"), write_config(tmp_path, "p8", "plain8")]
    runs = ["--trainer.max_epochs=3", "--trainer.limit_train_batches=4", "--trainer.deterministic=true"]
    runs += ["--trainer.accelerator=cpu", "--trainer.callbacks+=processes.SlowSteps", *data_args]
    argv = [*map(str, configs), "--seeds", "0", "1", *runs]
    submit = [*argv, "--root", "cluster", "--slurm=--cpus-per-task=1", "--report", "fig.png", "--table", "table.md"]

    assert sweep.main(submit) == 0
    out = capsys.readouterr().out
    array = re.search(r"submitted job array (\d+): 4 of 4 run\(s\)", out)[1]
    report_job = re.search(r"submitted report job (\d+)", out)[1]
    script = (tmp_path / "cluster/sweep.sbatch").read_text()
    assert '--task "$SLURM_ARRAY_TASK_ID"' in script and "--report" not in script  # the report is its own job
    assert "--collect --report fig.png --table table.md" in (tmp_path / "cluster/report.sbatch").read_text()

    # In the middle of their fits (once their first last.ckpt exists, before their last epoch), the
    # first task is requeued by SLURM, and the second gets the USR1 of `--signal=B:USR1@...` and
    # requeues itself.
    first, second = tmp_path / "cluster/r8-s0", tmp_path / "cluster/r8-s1"
    for run in (first, second):
        wait_for((run / "lightning_logs/version_0/checkpoints/last.ckpt").is_file, 300, f"{run.name}'s last.ckpt")
    assert not any("epoch 3/3" in (run / "fit.log").read_text() for run in (first, second))
    subprocess.run(["scontrol", "requeue", f"{array}_0"], check=True, capture_output=True)
    # (Its exit status is not checked: slurm 22.05's scancel retries a signal to an array task and
    # can fail on its retries once the first one got through; what the task did is checked below.)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{array}_1"], capture_output=True)
    wait_for(lambda: not queued(array, report_job), 900, "the array and the report job to end")

    for run in (first, second):
        log = (run / "fit.log").read_text()
        assert re.search(r"^SIGTERM: stopped at epoch \d+, step \d+ and saved", log, re.MULTILINE), log
        fits = re.findall(r"^\$ .* -m resnet_lit fit .*$", log, re.MULTILINE)
        assert len(fits) == 2 and "--ckpt_path last" in fits[1]  # the requeued task resumed
        assert "Restoring states from the checkpoint path at" in log
        assert sorted(p.name for p in (run / "lightning_logs").iterdir()) == ["version_0", "version_1"]  # fit, test
        assert not list(run.rglob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue stayed out of it
    (task_log,) = (tmp_path / "cluster").glob(f"slurm-{array}_1.out")
    said = task_log.read_text()
    assert "SIGUSR1: stopped" in said and f"SLURM job {array}_1: requeued" in said
    names = ["p8-s0", "p8-s1", "r8-s0", "r8-s1"]
    assert sorted(p.name for p in (tmp_path / "cluster").iterdir() if (p / "done").is_file()) == names
    table = (tmp_path / "table.md").read_text()
    assert "| r8 | 2 | Fashion-MNIST | resnet8 |" in table and "| p8 | 2 | Fashion-MNIST | plain8 |" in table
    assert (tmp_path / "fig.png").stat().st_size > 10_000

    # The same sweep on this machine: every run ends on the same weights, the requeued one included.
    assert sweep.main([*argv, "--root", "local"]) == 0
    for name in names:
        cluster, local = (
            tmp_path / root / name / "lightning_logs/version_0/checkpoints/last.ckpt" for root in ("cluster", "local")
        )
        assert_identical(weights(cluster), weights(local))

    capsys.readouterr()
    scripts = (tmp_path / "cluster/sweep.sbatch").stat().st_mtime_ns
    assert sweep.main(submit) == 0  # finished: the same command submits nothing
    assert "every run of the sweep has finished (4 in cluster); nothing submitted" in capsys.readouterr().out
    assert (tmp_path / "cluster/sweep.sbatch").stat().st_mtime_ns == scripts


@pytest.mark.slow  # three validations: two under SLURM (one of them DDP), one here
def test_srun_tasks_are_one_ddp_job_and_a_plain_run_in_an_allocation_is_one_process(tmp_path, trained, job_env):
    ckpt = trained / "lightning_logs/version_0/checkpoints/last.ckpt"
    validate = [sys.executable, "-m", "resnet_lit", "validate", f"--ckpt_path={ckpt}", "--trainer.accelerator=cpu"]
    validate += ["--trainer.enable_progress_bar=false"]
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]

    # `srun --ntasks 2`, without --ntasks-per-node (which Lightning alone would refuse).
    srun = subprocess.run(
        ["srun", "--ntasks=2", *validate, *ddp], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert srun.returncode == 0, srun.stdout + srun.stderr
    said = srun.stdout + srun.stderr
    assert "MEMBER: 1/2" in said and "MEMBER: 2/2" in said  # SLURM's two tasks are the DDP job's two ranks

    # A plain run in an allocation of two tasks (not started by srun): one process, not half a DDP job.
    plain = subprocess.run(
        ["sbatch", "--wait", "--ntasks=2", f"--output={tmp_path / 'plain.out'}", "--wrap", " ".join(validate)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = (tmp_path / "plain.out").read_text()
    assert plain.returncode == 0, output
    assert "MEMBER" not in output

    here = run_module(["validate", f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false"], cwd=tmp_path)
    finish(here)
    assert here.returncode == 0
    logs = tmp_path / "lightning_logs"
    accuracies = [[v for _, v in scalars(logs / f"version_{i}")["val/acc"]] for i in range(3)]
    assert accuracies[0] == accuracies[1] == accuracies[2]
    assert 0 < accuracies[0][0] < 1  # a count that could differ, not an all-or-nothing accuracy
