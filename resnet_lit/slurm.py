"""A sweep as a SLURM job array: one array task per run, then the report as a job that waits for them.

    python -m resnet_lit.sweep configs/r20.yaml configs/r56.yaml --seeds 0 1 2 --root runs/paper \\
        --slurm="--partition gpu --gres gpu:1 --time 24:00:00" --report fig6.png --table table6.md

Every array task runs `python -m resnet_lit.sweep ... --task I`: the I-th run of the same list, with
the local sweep's rules (a finished run is skipped, an interrupted one resumes from its
`last.ckpt` in its own folder, a run another task holds is left alone). So SLURM itself is the
scheduler; nothing here waits on it. The batch scripts stay in the sweep's root
(`sweep.sbatch`, `report.sbatch`), to be read or resubmitted by hand. Running the same command
again submits only the runs that have not finished, and nothing when all have.

Preemption and time limits: SLURM sends SIGTERM before it kills a task (`scancel`, the time
limit, `scontrol requeue`); the task passes it on, the fit saves `last.ckpt`, and the task is
submitted with `--requeue`, so a requeued task goes on from there. `--signal=B:USR1@90` among the
sbatch options asks SLURM for a USR1 90 s before the time limit: the task then stops the run the
same way and requeues itself (`scontrol requeue`).
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

ARRAY_SCRIPT = "sweep.sbatch"
REPORT_SCRIPT = "report.sbatch"


class SubmitError(Exception):
    """sbatch is missing or refused the job; the message is sbatch's."""


def batch_script(name: str, command: list[str], log: str) -> str:
    """A batch script that runs `command` in this folder, as the batch shell itself (`exec`).

    `exec`: the signals SLURM sends the batch shell (SIGTERM, `--signal=B:...`) reach the sweep.
    """
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name={name}",
            f"#SBATCH --output={log}",
            "#SBATCH --open-mode=append",  # a requeued task adds to its log
            "#SBATCH --ntasks=1",
            f"cd {shlex.quote(str(Path.cwd()))}",
            "exec " + shlex.join(command),
            "",
        ]
    )


def sbatch(script: Path, options: list[str]) -> str:
    """Submit `script`; its job id."""
    command = ["sbatch", "--parsable", *options, str(script)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise SubmitError(f"sbatch refused {script}: {lines[-1] if lines else f'exit {result.returncode}'}")
    return result.stdout.strip().split(";")[0]  # "id" or "id;cluster"


def submit(
    root: Path, unfinished: list[int], task: list[str], collect: list[str], options: list[str]
) -> tuple[str, str]:
    """Submit the array of `unfinished` run indices and the report job after it; their job ids.

    `task` is the sweep command of one task, without its `--task I`; `collect` the report's.
    """
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch was not found: --slurm needs a SLURM login node (or run the sweep without it)")
    root.mkdir(parents=True, exist_ok=True)
    array_script, report_script = root / ARRAY_SCRIPT, root / REPORT_SCRIPT
    array_script.write_text(
        batch_script(
            "resnet_lit-sweep", [*task, "--task", "$SLURM_ARRAY_TASK_ID"], str(root / "slurm-%A_%a.out")
        ).replace("'$SLURM_ARRAY_TASK_ID'", '"$SLURM_ARRAY_TASK_ID"')  # the one word the shell expands
    )
    report_script.write_text(batch_script("resnet_lit-report", collect, str(root / "slurm-report-%j.out")))
    indices = ",".join(str(i) for i in unfinished)
    array = sbatch(array_script, [f"--array={indices}", "--requeue", *options])
    # afterany: the report draws what finished, even where a task failed; a requeued task is not ended.
    report = sbatch(report_script, [f"--dependency=afterany:{array}", *options])
    return array, report


def requeue_this_task() -> None:
    """Put this array task (or job) back in the queue; SLURM starts it again, and it resumes."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    said = "requeued" if result.returncode == 0 else f"could not requeue ({result.stderr.strip()})"
    print(f"SLURM job {job}: {said}", file=sys.stderr, flush=True)


def without_slurm(env: dict[str, str]) -> dict[str, str]:
    """The environment of a task's fit and test: SLURM's variables left out.

    Each is one process. With SLURM's variables, Lightning takes it for a SLURM-managed job and
    adds its own requeue on USR1: it saves `hpc_ckpt_N.ckpt` beside the run and resumes from that
    in a new log folder. The task does the requeueing instead, and the run saves only `last.ckpt`
    in its own folder.
    """
    return {key: value for key, value in env.items() if not key.startswith("SLURM_")}


# --- a run inside a SLURM allocation ---------------------------------------------------------------


def cluster_environment() -> ClusterEnvironment | None:
    """The Trainer's cluster environment inside a SLURM allocation; None elsewhere (Lightning's choice).

    - A process that `srun` did not start (a plain `python -m resnet_lit fit` in an sbatch script
      or an salloc shell) is one process, whatever the allocation's `--ntasks`: Lightning would
      take `SLURM_NTASKS` for its world size and wait for processes that never come.
    - Under `srun`, each task is one DDP process (`srun --ntasks 2 ... --trainer.devices 2`), with
      Lightning's requeue on USR1 off: it would save `hpc_ckpt_N.ckpt` beside the run and resume
      from that in a new run folder. A signal saves `last.ckpt` (SaveOnInterrupt) and the same
      command with `--ckpt_path last` goes on in the same folder; `sweep --slurm` requeues.
    - `srun --ntasks N` on one node without `--ntasks-per-node` (which Lightning refuses) is taken
      as N tasks on that node.
    """
    env = os.environ
    if "SLURM_NTASKS" not in env or SLURMEnvironment.job_name() in ("bash", "interactive"):
        return None  # not SLURM, or its interactive mode: Lightning decides
    if TorchElasticEnvironment.detect():
        return None  # torchrun inside an allocation: its processes, its ranks
    if "SLURM_STEP_ID" not in env:
        return LightningEnvironment()
    if "SLURM_NTASKS_PER_NODE" not in env and env.get("SLURM_NNODES", "1") == "1":
        env["SLURM_NTASKS_PER_NODE"] = env["SLURM_NTASKS"]  # read by Lightning's check and its device count
    return SLURMEnvironment(auto_requeue=False)
