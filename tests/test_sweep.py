"""The sweep: real `python -m resnet_lit` processes on the stand-in data, one after another."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnet_lit import slurm, sweep


def write_config(folder: Path, name: str, arch: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"seed_everything: 0\ntrainer:\n  max_epochs: 1\n  log_every_n_steps: 2\nmodel:\n  arch: {arch}\n")
    return path


def test_extra_arguments_go_to_every_run_and_the_sweeps_own_are_taken(tmp_path):
    args, extra = sweep.parse_args(
        ["a.yaml", "b.yaml", "--report", "x.png", "--trainer.max_epochs", "3", "--data.data_dir=d", "--root", "r"]
    )
    assert args.configs == [Path("a.yaml"), Path("b.yaml")]
    assert (args.report, args.root, args.table) == (Path("x.png"), Path("r"), None)
    assert extra == ["--trainer.max_epochs", "3", "--data.data_dir=d"]


def test_runs_are_named_after_their_configs_with_the_folder_where_names_clash(tmp_path):
    jobs = sweep.jobs_for(
        [Path("configs/r20.yaml"), Path("configs/cifar10/r20.yaml"), Path("configs/r56.yaml")], tmp_path
    )
    assert [job.folder for job in jobs] == [tmp_path / "configs-r20", tmp_path / "cifar10-r20", tmp_path / "r56"]
    with pytest.raises(ValueError, match="given twice"):
        sweep.jobs_for([Path("configs/r20.yaml"), Path("configs/r20.yaml")], tmp_path)


def test_seeds_give_each_config_a_folder_and_a_seed_per_seed(tmp_path):
    jobs = sweep.jobs_for([Path("configs/r20.yaml"), Path("configs/r56.yaml")], tmp_path, seeds=[0, 1])
    assert [job.folder.name for job in jobs] == ["r20-s0", "r20-s1", "r56-s0", "r56-s1"]
    assert jobs[1].args(["--trainer.max_epochs=3"]) == ["--seed_everything=1", "--trainer.max_epochs=3"]
    with pytest.raises(ValueError, match="given twice"):
        sweep.jobs_for([Path("configs/r20.yaml")], tmp_path, seeds=[0, 0])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trainer.max_epochs", "3", "CONFIG"], "config '3' is not a YAML file; give the configs first"),
        (["CONFIG", "--trainer.default_root_dir=x"], "--trainer.default_root_dir is set by the sweep"),
        (
            ["CONFIG", "--seeds", "0", "1", "--seed_everything=3"],
            "--seed_everything is set by the sweep for each run; give the seeds with --seeds",
        ),
        (["CONFIG", "CONFIG"], "configs given twice"),
    ],
)
def test_bad_input_ends_in_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, "r8", "resnet8")
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # 5 processes: a failing fit, a fit and a test, and again on the rerun
def test_a_failed_run_does_not_stop_the_next_and_a_rerun_skips_finished_runs(tmp_path, data_args, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = write_config(tmp_path, "broken", "resnet7")  # not 6n+2: the CLI refuses it
    good = write_config(tmp_path, "r8", "resnet8")
    argv = [str(bad), str(good), "--report", "fig.png", "--table", "table.md", *data_args]

    assert sweep.main(argv) == 1
    out, err = capsys.readouterr()
    assert "broken: fit failed with exit code 2" in err and "unknown depth 7" in err
    done = json.loads((tmp_path / "runs/r8/done").read_text())
    assert done["fit_dir"] == str(Path("runs/r8/lightning_logs/version_0"))
    assert Path(done["best_ckpt"]).name.startswith("best-") and Path(done["best_ckpt"]).is_file()
    assert done["fit_seconds"] > 0 and done["test_seconds"] > 0
    assert sorted(p.name for p in (tmp_path / "runs/r8/lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert "test/acc" in (tmp_path / "runs/r8/test.log").read_text()
    with Image.open(tmp_path / "fig.png") as png:
        assert png.format == "PNG"
    table = (tmp_path / "table.md").read_text()
    assert "| r8 | 1 | Fashion-MNIST | resnet8 |" in table and "broken" not in table
    assert "| best |" in table  # the test of the best checkpoint was found

    marker = (tmp_path / "runs/r8/done").stat().st_mtime_ns
    assert sweep.main(argv) == 1  # the broken config still fails
    out, err = capsys.readouterr()
    assert "r8: finished before, skipped" in out and "r8: fit ..." not in out
    assert (tmp_path / "runs/r8/done").stat().st_mtime_ns == marker
    assert sorted(p.name for p in (tmp_path / "runs/r8/lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert "| r8 | 1 | Fashion-MNIST | resnet8 |" in (tmp_path / "table.md").read_text()

    # The same folder with other arguments is refused, not mixed or silently skipped.
    assert sweep.main([str(good), "--trainer.max_epochs=2", *data_args]) == 1
    assert "was started with other arguments" in capsys.readouterr().err


@pytest.mark.slow  # 3 processes: an interrupted fit, its resumption, the test
def test_an_interrupted_fit_resumes_from_its_last_checkpoint(tmp_path, data_args, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, "r8", "resnet8")
    # The first attempt stops after 1 of 2 epochs, as a killed run would, leaving last.ckpt behind.
    python = [sys.executable, "-m", "resnet_lit"]
    argv = [str(config), "--trainer.max_epochs=2", *data_args]
    (tmp_path / "runs/r8").mkdir(parents=True)
    (tmp_path / "runs/r8/sweep.json").write_text(json.dumps({"args": [str(config), *argv[1:]]}))
    interrupted = [*python, "fit", "--config", str(config), "--trainer.default_root_dir=runs/r8", *argv[1:]]
    sweep._call([*interrupted, "--trainer.max_epochs=1"], tmp_path / "runs/r8/fit.log", "first attempt")

    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "r8: fit (resuming)" in out
    logs = sorted(p.name for p in (tmp_path / "runs/r8/lightning_logs").iterdir())
    assert logs == ["version_0", "version_1"]  # the resumed fit went on in version_0; the test is version_1
    assert len(list((tmp_path / "runs/r8/lightning_logs/version_0").glob("events.out.tfevents.*"))) == 2
    assert "| r8 | 1 | Fashion-MNIST | resnet8 | 8 | 75,002 | 20 |" in out  # both epochs, one run


def test_jobs_are_spread_over_the_gpus_in_turn_or_split_the_cores(monkeypatch):
    jobs = [sweep.Job(Path(f"c{i}.yaml"), Path(f"runs/c{i}")) for i in range(5)]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    sweep.assign_devices(jobs, n_jobs=4)
    assert [job.env["CUDA_VISIBLE_DEVICES"] for job in jobs] == ["0", "1", "0", "1", "0"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    sweep.assign_devices(jobs, n_jobs=2)
    assert all(job.env == {"OMP_NUM_THREADS": "4"} for job in jobs)


@pytest.mark.slow  # two runs at once, stopped, then resumed and tested: 6 processes
def test_a_sweep_of_parallel_jobs_stopped_and_rerun_finishes_every_run_exactly(tmp_path, data_args):
    configs = [write_config(tmp_path, name, arch) for name, arch in (("r8", "resnet8"), ("p8", "plain8"))]
    argv = [*map(str, configs), "--jobs", "2", "--trainer.max_epochs=3", *data_args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "resnet_lit.sweep", *argv]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lasts = [tmp_path / f"runs/{name}/lightning_logs/version_0/checkpoints/last.ckpt" for name in ("r8", "p8")]
    deadline = time.monotonic() + 300
    while not all(last.exists() for last in lasts) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # as a scheduler stops the sweep
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 143, output
    assert "SIGTERM: stopped; the same command resumes what is unfinished" in output
    for name in ("r8", "p8"):  # what each run did, in a line
        assert re.search(rf"- {name}: fit stopped at epoch \d+, step \d+, saved \S*runs/{name}/\S+last.ckpt", output)
    stopped_at = [torch.load(last, weights_only=True)["global_step"] for last in lasts]
    assert all(0 < step < 30 for step in stopped_at), stopped_at

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "r8: fit (resuming)" in rerun.stdout and "p8: fit (resuming)" in rerun.stdout
    assert any(line.startswith("r8: epoch 3/3, step 30") for line in rerun.stdout.splitlines())  # a line per epoch
    for name, last in zip(("r8", "p8"), lasts, strict=True):
        assert torch.load(last, weights_only=True)["global_step"] == 30
        assert (tmp_path / f"runs/{name}/done").is_file()
        assert not list(last.parent.glob("last-v*.ckpt"))


# --- claims, stops and damaged checkpoints, with a stand-in for python -m resnet_lit ----------------

FAKE_RUN = """
import signal, sys, time
from pathlib import Path
Path("calls").open("a").write(" ".join(sys.argv[1:3]) + "\\n")
saves = "saver" in " ".join(sys.argv)
def stop(*_):
    if saves:  # as SaveOnInterrupt says it
        print("SIGTERM: stopped at epoch 0, step 3 and saved runs/saver/last.ckpt; continue with --ckpt_path last")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("started", flush=True)
time.sleep(float(sys.argv[-1]) if sys.argv[-1].replace(".", "").isdigit() else 0)
"""


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """`python` for sweep.main: a process that records its call, waits, and on SIGTERM exits 143."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    return [sys.executable, str(script)]


def test_a_sigterm_says_what_each_run_did(tmp_path, fake_run, capsys):
    configs = [write_config(tmp_path, name, "resnet8") for name in ("saver", "aborter")]
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = sweep.main([*map(str, configs), "--jobs", "2", "--sleep", "30"], python=fake_run)
    finally:
        timer.cancel()
    assert code == 143
    err = capsys.readouterr().err
    assert "- saver: fit stopped at epoch 0, step 3, saved runs/saver/last.ckpt" in err
    assert "- aborter: fit stopped without saving (exit 143); the rerun starts it over (no checkpoint yet)" in err
    assert "every run saved" not in err


def test_a_run_another_sweep_holds_is_left_to_it(tmp_path, fake_run, capsys):
    import fcntl

    config = write_config(tmp_path, "r8", "resnet8")
    (tmp_path / "runs/r8").mkdir(parents=True)
    with open(tmp_path / "runs/r8/sweep.lock", "a+") as held:  # as a first sweep holds it while it runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345 on node7\n")
        held.flush()
        assert sweep.main([str(config)], python=fake_run) == 0
    out = capsys.readouterr().out
    assert "r8: being run by another sweep (pid 12345 on node7); left to it" in out
    assert "1 run(s) left to the sweep running them: r8" in out
    assert not (tmp_path / "calls").exists()  # nothing was started for it
    assert not (tmp_path / "runs/r8/sweep.json").exists()


def test_a_damaged_checkpoint_fails_its_run_in_one_line(tmp_path, fake_run, capsys):
    config = write_config(tmp_path, "r8", "resnet8")
    checkpoints = tmp_path / "runs/r8/lightning_logs/version_0/checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"PK\x03\x04 not a whole zip")
    assert sweep.main([str(config), str(write_config(tmp_path, "other", "resnet8"))], python=fake_run) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"- r8: checkpoint '\S+last.ckpt' is damaged", err), err
    assert "fit --config" in (tmp_path / "calls").read_text()  # the other run still ran


def test_slurm_options_that_cannot_work_end_in_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, "r8", "resnet8")
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    assert sweep.main([str(config), "--slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch was not found: --slurm needs a SLURM login node" in err[0]
    assert sweep.main([str(config), "--seeds", "0", "1", "--task", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--task 2 is not a run of this sweep: it has 2, 0 to 1" in err[0]
    assert not (tmp_path / "runs").exists()


def test_a_sweep_task_starts_its_runs_without_slurms_variables(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    env = slurm.without_slurm(dict(os.environ))
    assert "SLURM_JOB_ID" not in env and "SLURM_NTASKS" not in env and env["PATH"] == os.environ["PATH"]
