"""Train a list of configs, up to `--jobs` at once, test each, then draw the report.

    python -m resnet_lit.sweep configs/plain20.yaml configs/plain56.yaml configs/r20.yaml configs/r56.yaml \\
        --jobs 2 --report degradation.png --trainer.max_epochs 3

Each config runs in its own process, in `<root>/<config name>/` (default root: runs/):
`python -m resnet_lit fit --config C`, then `python -m resnet_lit test` on the run's best
checkpoint, with their output in fit.log and test.log there. Any other argument is passed to
every fit and test (`--trainer.max_epochs 3`, `--data.data_dir X`).

- `--seeds 0 1 2` runs every config once per seed, in `<name>-s<seed>/` with `--seed_everything`;
  the report's table then adds a row per config with the mean ± standard deviation over its seeds.
- `--jobs N` runs up to N configs at once, each in its own processes. With G GPUs, the runs are
  spread over them (`CUDA_VISIBLE_DEVICES`, in turn; several may share one); on a CPU, each of
  the N gets its share of the cores (`OMP_NUM_THREADS`). The terminal gets one line per run per
  epoch, and a line when each fit or test starts and ends, each prefixed with the run's name.

- A failed run does not stop the others; the failures are listed at the end (exit code 1).
- A finished run is not redone: its folder's `done` marker records how it ran, so running the
  same command again only does what is missing. An interrupted fit resumes from its last.ckpt;
  a fit that finished is not repeated for a test that failed.
- A folder started with other arguments (another config, other extra arguments) is refused
  rather than mixing two settings in one folder: delete it (or pick another --root).
- A run is claimed by one sweep at a time (a lock on `sweep.lock` in its folder, released when
  that sweep ends or dies): the same sweep started twice in one root leaves each run to the
  first that took it, and says so.
- SIGTERM or Ctrl-C stops every run (each saves its last.ckpt) and says what each did; the same
  command resumes them.
- `--slurm` submits the sweep to SLURM instead, as a job array, one task per run (`--task I`),
  and the report as a job that waits for them (resnet_lit.slurm).
"""

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resnet_lit import report, slurm
from resnet_lit.checkpointing import CheckpointError
from resnet_lit.errors import say_refusal
from resnet_lit.runs import newest_run

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

# In each run's folder: the arguments it was started with, then a marker per finished stage.
SETTINGS = "sweep.json"
FIT_DONE = "fit.json"  # the fit finished; the test had not (yet)
DONE = "done"  # fit and test finished: timings, commands, the fit's log folder and best checkpoint
LOCK = "sweep.lock"  # locked by the sweep running the run; who holds it (pid, host) inside
RESERVED = ("--trainer.default_root_dir", "--ckpt_path", "--config", "-c")  # the sweep sets these per run
SEEDED = ("--seed_everything",)  # set per run with --seeds


@dataclass
class Job:
    """One config of the sweep, the folder it runs in, and the environment of its processes."""

    config: Path
    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    inherited: dict[str, str] | None = None  # the environment its processes start from (default: this one's)

    def args(self, extra: list[str]) -> list[str]:
        """The arguments every process of this job gets after its config: the seed, then the sweep's."""
        return [*([f"--seed_everything={self.seed}"] if self.seed is not None else []), *extra]

    @property
    def name(self) -> str:
        return self.folder.name


class RunFailed(Exception):
    """A run's fit or test failed; the message says which and where its log is."""


class RunClaimed(Exception):
    """Another sweep is running this run."""


class RunStopped(Exception):
    """A run's process ended on SIGTERM or Ctrl-C; the message says whether it saved, and where."""


@contextmanager
def claimed(job: Job) -> Iterator[None]:
    """Hold the run's lock while the block runs; RunClaimed where another sweep holds it.

    The lock is the operating system's (flock): it ends with the process that held it, so a sweep
    that was killed leaves no stale claim behind.
    """
    job.folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(job.folder / LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise RunClaimed(f"{job.name}: being run by another sweep ({holder}); left to it") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def jobs_for(configs: list[Path], root: Path, seeds: list[int] | None = None) -> list[Job]:
    """One folder per config (and seed), named after the file; its parent folder's name is added where names clash.

    With `seeds`, every config runs once per seed, in `<name>-s<seed>` with `--seed_everything <seed>`.
    """
    stems = [config.stem for config in configs]
    names = [f"{c.parent.name}-{c.stem}" if stems.count(c.stem) > 1 else c.stem for c in configs]
    clashes = {name for name in names if names.count(name) > 1}
    if clashes:
        raise ValueError(f"configs given twice (or with the same folder and file names): {', '.join(sorted(clashes))}")
    if seeds is None:
        return [Job(config, root / name) for config, name in zip(configs, names, strict=True)]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds given twice: {seeds}")
    return [
        Job(config, root / f"{name}-s{seed}", seed=seed)
        for config, name in zip(configs, names, strict=True)
        for seed in seeds
    ]


def run_job(job: Job, extra: list[str], python: list[str]) -> dict:
    """Fit and test one config, unless its `done` marker says it already ran; returns the marker."""
    extra = job.args(extra)
    args = [str(job.config), *extra]
    settings, marker, fit_marker = job.folder / SETTINGS, job.folder / DONE, job.folder / FIT_DONE
    recorded = _read_json(settings).get("args") if settings.is_file() else None
    if recorded is not None and recorded != args:
        raise RunFailed(
            f"{job.folder} was started with other arguments ({' '.join(recorded)}); delete it "
            f"(or use another --root) to train {' '.join(args)}"
        )
    if marker.is_file():
        print(f"{job.name}: finished before, skipped ({marker})", flush=True)
        return _read_json(marker)
    job.folder.mkdir(parents=True, exist_ok=True)
    if recorded is None:
        settings.write_text(json.dumps({"args": args}, indent=2) + "\n")

    if fit_marker.is_file():
        fit = _read_json(fit_marker)
        print(f"{job.name}: fit finished before ({fit_marker}); testing", flush=True)
    else:
        fit = _fit(job, extra, python)
        fit_marker.write_text(json.dumps(fit, indent=2) + "\n")
    command = [*python, "test", "--config", str(job.config), "--ckpt_path", fit["best_ckpt"], *_base(job), *extra]
    test_seconds = _call(command, job.folder / "test.log", f"{job.name}: test", job.env, job.inherited)
    done = {**fit, "test_seconds": round(test_seconds, 1), "test_command": command}
    marker.write_text(json.dumps(done, indent=2) + "\n")
    fit_marker.unlink()
    return done


def _fit(job: Job, extra: list[str], python: list[str]) -> dict:
    resume = newest_run(job.folder) is not None
    command = [*python, "fit", "--config", str(job.config), *_base(job), *extra]
    if resume:  # an interrupted fit: go on from its last.ckpt, in its log folder (resnet_lit.cli)
        command += ["--ckpt_path", "last"]
    fit_seconds = _call(
        command,
        job.folder / "fit.log",
        f"{job.name}: fit" + (" (resuming)" if resume else ""),
        job.env,
        job.inherited,
    )
    run = newest_run(job.folder)
    if run is None:
        raise RunFailed(f"{job.name}: fit wrote no checkpoint (see {job.folder / 'fit.log'})")
    try:  # the project's checked reader: a damaged checkpoint is this run's failure, in one line
        best = run.best() or run.last
    except CheckpointError as err:
        raise RunFailed(f"{job.name}: {err}") from err
    return {
        "config": str(job.config),
        "fit_dir": str(run.folder),
        "best_ckpt": str(best),
        "fit_seconds": round(fit_seconds, 1),
        "fit_command": command,
    }


def _base(job: Job) -> list[str]:
    # Logs and checkpoints in the job's folder; no progress bar in a log file.
    return [f"--trainer.default_root_dir={job.folder}", "--trainer.enable_progress_bar=false"]


def _call(
    command: list[str],
    log: Path,
    what: str,
    env: dict[str, str] | None = None,
    inherited: dict[str, str] | None = None,
) -> float:
    """Run one process, its output into `log`; its lines that report an epoch also to the terminal.

    Its environment: `inherited` (default: this process's), with `env` over it.
    """
    _say(f"{what} ... (log: {log})")
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**(os.environ if inherited is None else inherited), "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        _children.add(process)
        try:
            for line in process.stdout:
                out.write(line)
                if line.startswith("epoch "):  # resnet_lit.callbacks.EpochLines, one per epoch
                    _say(f"{what.split(':')[0]}: {line.strip()}")
            code = process.wait()
        finally:
            _children.discard(process)
    seconds = time.monotonic() - start
    if code in (130, 128 + signal.SIGTERM, -signal.SIGTERM, -signal.SIGINT) and _stopped_by is not None:
        raise RunStopped(_what_it_did(what, log, code))
    if code != 0:
        raise RunFailed(f"{what} failed with exit code {code} after {seconds:.0f} s; {_last_line(log)} (log: {log})")
    _say(f"{what}: {seconds:.0f} s")
    return seconds


_children: set[subprocess.Popen] = set()  # the runs' processes now running
_print_lock = threading.Lock()


def _say(line: str) -> None:
    with _print_lock:  # whole lines from the jobs' threads
        print(line, flush=True)


def assign_devices(jobs: list[Job], n_jobs: int) -> None:
    """Spread the jobs over the GPUs in turn, or split the CPU cores between the jobs that run at once."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if "CUDA_VISIBLE_DEVICES" in os.environ and gpus:
        visible = [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    else:
        visible = [str(i) for i in range(gpus)]
    threads = max(1, (os.cpu_count() or 1) // max(1, n_jobs))
    for i, job in enumerate(jobs):
        job.env = {"CUDA_VISIBLE_DEVICES": visible[i % len(visible)]} if visible else {}
        if n_jobs > 1:
            job.env["OMP_NUM_THREADS"] = str(threads)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return f"last line: {lines[-1]!r}" if lines else "no output"


SAVED = re.compile(r"^(?:SIGTERM|SIGUSR1|Ctrl-C): (stopped at epoch \d+, step \d+) and saved (\S+);", re.MULTILINE)


def _what_it_did(what: str, log: Path, code: int) -> str:
    """One line on a run stopped by a signal: where it saved, or that it did not and what the rerun does."""
    text = log.read_text(errors="replace")
    start = text.rfind("\n$ ")  # this process's part of the log (a log holds every attempt)
    saved = list(SAVED.finditer(text[start:] if start >= 0 else text))
    if saved:
        return f"{what} {saved[-1].group(1)}, saved {saved[-1].group(2)}"
    run = newest_run(log.parent)  # the log lies in the run's folder
    rerun = f"the rerun goes on from {run.last}" if run else "the rerun starts it over (no checkpoint yet)"
    return f"{what} stopped without saving (exit {code}); {rerun}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a marker written by something else (a shell script): finished, settings unknown


# --- the command ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_lit.sweep",
        description="Train configs one after another (each fit, then test on its best checkpoint, in its "
        "own process and folder), skip those already finished, then draw the report. Arguments not "
        "listed here (e.g. --trainer.max_epochs 3 --data.data_dir X) are passed to every run.",
        allow_abbrev=False,
    )
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG", help="YAML configs, e.g. configs/r20.yaml")
    parser.add_argument("--root", type=Path, default=Path("runs"), help="where the runs' folders go (default: runs)")
    parser.add_argument("--jobs", type=int, default=1, help="how many configs run at once (default: 1)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="run every config once per seed, in <name>-s<seed>/ (the report adds mean ± std rows)",
    )
    parser.add_argument("--report", type=Path, metavar="FILE.png", help="draw the report's figure here at the end")
    parser.add_argument("--table", type=Path, metavar="FILE.md", help="write the report's table here at the end")
    parser.add_argument(
        "--slurm",
        nargs="?",
        const="",
        metavar="SBATCH_OPTIONS",
        help="submit to SLURM instead: a job array of the runs that have not finished, then the report as a "
        'job after them; sbatch options in one string, e.g. --slurm="--partition gpu --gres gpu:1 --time 24:00:00"',
    )
    parser.add_argument(
        "--task", type=int, metavar="I", help="run only the I-th run of the list, from 0 (what each array task runs)"
    )
    parser.add_argument(
        "--collect", action="store_true", help="run nothing: report on the runs that have finished (the report job)"
    )
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None, python: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    python = python or [sys.executable, "-m", "resnet_lit"]
    for config in args.configs:
        if config.suffix not in (".yaml", ".yml") or not config.is_file():
            return say_refusal(
                f"config {str(config)!r} is not a YAML file; give the configs first, then the sweep's "
                "options and the arguments for every run (e.g. configs/r20.yaml --trainer.max_epochs 3)"
            )
    if args.jobs < 1:
        return say_refusal(f"--jobs must be 1 or more, got {args.jobs}")
    reserved = [arg for arg in extra if arg.split("=", 1)[0] in RESERVED + (SEEDED if args.seeds else ())]
    if reserved:
        option = reserved[0].split("=", 1)[0]
        instead = "give the seeds with --seeds" if option in SEEDED else "use --root to choose where runs go"
        return say_refusal(f"{option} is set by the sweep for each run; {instead}")
    try:
        jobs = jobs_for(args.configs, args.root, args.seeds)
    except ValueError as err:
        return say_refusal(str(err))
    if args.slurm is not None:
        return _submit(args, extra, jobs)
    if args.task is not None:
        if not 0 <= args.task < len(jobs):
            return say_refusal(
                f"--task {args.task} is not a run of this sweep: it has {len(jobs)}, 0 to {len(jobs) - 1}"
            )
        jobs = [jobs[args.task]]
        jobs[0].inherited = slurm.without_slurm(dict(os.environ))
    if args.collect:
        return _collect(args, jobs)

    assign_devices(jobs, args.jobs)
    results: dict[int, Path | str] = {}  # a finished run's log folder, or why it failed
    stopped: dict[int, str] = {}  # what a run stopped by a signal did
    left: list[str] = []  # runs another sweep is running

    def run(i: int, job: Job) -> None:
        if _stopped_by is not None:
            return  # stopping: start no new run
        where = f", GPU {job.env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in job.env else ""
        _say(f"[{i + 1}/{len(jobs)}] {job.name} ({job.config}{where})")
        try:
            with claimed(job):
                done = run_job(job, extra, python)
        except RunClaimed as err:
            _say(str(err))
            left.append(job.name)
            return
        except RunStopped as err:
            stopped[i] = str(err)
            return
        except RunFailed as err:
            _say(f"FAILED: {err}")
            results[i] = str(err)
            return
        results[i] = _log_folder(job, done)

    stop = _forward_signals(requeue_on_usr1=args.task is not None)
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(run, i, job) for i, job in enumerate(jobs)]:
                future.result()
    finally:
        stop()
    if _stopped_by is not None:
        print(f"{_stopped_by}: stopped; the same command resumes what is unfinished", file=sys.stderr)
        for i in sorted(stopped):
            print(f"- {stopped[i]}", file=sys.stderr)
        if _stopped_by == "SIGUSR1":  # SLURM's warning before the time limit: go on in a new task
            slurm.requeue_this_task()
        return 130 if _stopped_by == "Ctrl-C" else 128 + signal.SIGTERM
    finished = [results[i] for i in sorted(results) if isinstance(results[i], Path)]
    failures = [results[i] for i in sorted(results) if isinstance(results[i], str)]

    code = _report(args, finished) if args.task is None else 0  # a task: the report job draws it
    if left:
        print(f"\n{len(left)} run(s) left to the sweep running them: {', '.join(left)}", flush=True)
    if failures:
        print(f"\n{len(failures)} of {len(jobs)} run(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"- {failure}", file=sys.stderr)
        return 1
    return 1 if code else 0


def _log_folder(job: Job, done: dict) -> Path:
    """Where the report reads a finished run: its fit's log folder, or the run's folder where the marker has none."""
    return Path(done["fit_dir"]) if done.get("fit_dir") else job.folder


def _report(args: argparse.Namespace, finished: list[Path]) -> int:
    if not finished:
        return 0
    report_args = [str(path) for path in finished]
    report_args += ["--out", str(args.report)] if args.report else []
    report_args += ["--table", str(args.table)] if args.table else []
    print(f"\nreport on {len(finished)} run(s):", flush=True)
    return report.main(report_args)


def _collect(args: argparse.Namespace, jobs: list[Job]) -> int:
    """The report on the runs that have finished; the others named."""
    finished, missing = [], []
    for job in jobs:
        done = _read_json(job.folder / DONE) if (job.folder / DONE).is_file() else None
        if done is None:
            missing.append(job.name)
        else:
            finished.append(_log_folder(job, done))
    if missing:
        print(f"{len(missing)} of {len(jobs)} run(s) not finished, left out: {', '.join(missing)}", file=sys.stderr)
    code = _report(args, finished)
    return 1 if missing or code else 0


def _submit(args: argparse.Namespace, extra: list[str], jobs: list[Job]) -> int:
    """The sweep as a SLURM job array of its unfinished runs, and the report job after it."""
    unfinished = [i for i, job in enumerate(jobs) if not (job.folder / DONE).is_file()]
    if not unfinished:
        print(f"every run of the sweep has finished ({len(jobs)} in {args.root}); nothing submitted", flush=True)
        return 0
    sweep = [sys.executable, "-m", "resnet_lit.sweep", *map(str, args.configs), "--root", str(args.root)]
    sweep += ["--seeds", *map(str, args.seeds)] if args.seeds else []
    collect = [*sweep, "--collect"]
    collect += ["--report", str(args.report)] if args.report else []
    collect += ["--table", str(args.table)] if args.table else []
    try:
        array, report_job = slurm.submit(args.root, unfinished, [*sweep, *extra], collect, shlex.split(args.slurm))
    except slurm.SubmitError as err:
        return say_refusal(str(err))
    names = ", ".join(jobs[i].name for i in unfinished)
    print(f"submitted job array {array}: {len(unfinished)} of {len(jobs)} run(s) ({names})", flush=True)
    print(f"submitted report job {report_job}, after the array ends", flush=True)
    print(f"follow: squeue -j {array},{report_job}; logs: {args.root}/slurm-*.out; stop: scancel {array}", flush=True)
    print(f"batch scripts: {args.root / slurm.ARRAY_SCRIPT}, {args.root / slurm.REPORT_SCRIPT}", flush=True)
    return 0


_stopped_by: str | None = None


def _forward_signals(requeue_on_usr1: bool = False):
    """Pass SIGTERM and Ctrl-C on to the runs (each saves its last.ckpt and stops); starts no new run.

    `requeue_on_usr1` (a SLURM task): SIGUSR1 stops the runs the same way, then requeues the task.
    """
    global _stopped_by
    _stopped_by = None
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def forward(signum, frame):
        global _stopped_by
        _stopped_by = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(signum, "SIGUSR1")
        for process in list(_children):
            process.send_signal(signal.SIGTERM)  # the run saves; a Ctrl-C reaches them from the terminal too

    signals = (signal.SIGTERM, signal.SIGINT, *([signal.SIGUSR1] if requeue_on_usr1 else []))
    previous = {sig: signal.signal(sig, forward) for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


if __name__ == "__main__":
    sys.exit(main())
