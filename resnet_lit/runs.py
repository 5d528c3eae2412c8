"""Run folders: `lightning_logs/version_N`, each claimed by one run, and the checkpoints inside them.

Lightning's `TensorBoardLogger` picks the next version by listing the folder, so two runs started
at the same moment in one folder both take `version_0`, and one overwrites the other's files.
`ExclusiveTensorBoardLogger` claims its folder with `mkdir`, which the file system lets exactly
one caller win; the loser takes the next number.
"""

import contextlib
import re
import shutil
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import TensorBoardLogger

VERSION = re.compile(r"version_(\d+)")
_claimed: list[Path] = []  # folders claim_version created in this process, newest last
LOGS = "lightning_logs"


def version_number(folder: Path) -> int:
    """N of a version_N folder; -1 for any other name."""
    match = VERSION.fullmatch(Path(folder).name)
    return int(match.group(1)) if match else -1


def run_folders(root: Path) -> list[Path]:
    """`root`'s version_N folders, oldest (lowest N) first."""
    root = Path(root)
    found = root.glob("version_*") if root.is_dir() else []
    return sorted((p for p in found if p.is_dir() and version_number(p) >= 0), key=version_number)


def claim_version(root: Path) -> int:
    """Create `root/version_N` for the lowest free N above every existing one, atomically; returns N."""
    root = Path(root)
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _claimed.append(root)
    taken = [version_number(p) for p in root.iterdir()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
        except FileExistsError:
            version += 1  # another run took it between the listing and the mkdir
            continue
        _claimed.append(root / f"version_{version}")
        return version


def release_empty_claims() -> None:
    """Remove the folders `claim_version` made that are still empty: a run refused before it wrote anything."""
    while _claimed:
        folder = _claimed.pop()
        with contextlib.suppress(OSError):  # not empty (the run wrote to it), or gone already
            folder.rmdir()


def claims_so_far() -> int:
    """How many folders `claim_version` has made in this process (for `discard_claims`)."""
    return len(_claimed)


def discard_claims(since: int = 0) -> None:
    """Remove the run folders `claim_version` made after the first `since`, unless a checkpoint is in one.

    For input refused after the folder was claimed (a Trainer setting Lightning checks only once
    it has the data): the folder holds the config and an empty log of a run that never trained.
    """
    while len(_claimed) > since:
        folder = _claimed.pop()
        if folder.is_dir() and not any(folder.rglob("*.ckpt")):
            shutil.rmtree(folder, ignore_errors=True)


class ExclusiveTensorBoardLogger(TensorBoardLogger):
    """Lightning's `TensorBoardLogger` whose new `version_N` folder belongs to this run alone.

    Until the run first writes (Lightning opens the experiment after the checks that can refuse a
    run, so a refused run leaves nothing behind) the version is the next free number, as
    Lightning's logger has it; then the folder is claimed with `claim_version`, and the version is
    the one claimed. Under DDP only the process of rank 0 claims; the others learn the folder from
    it, as with Lightning's own logger. The version is Lightning's private `_version`, which has no
    setter; no upstream issue about two runs taking one folder was found: Lightning's logger picks
    the next number by listing the folders (`TensorBoardLogger._get_next_version`, Lightning 2.6).

    The HPARAMS tab: a training run's row shows its hyperparameters against the `hp_metric` it
    logs itself (the best val/acc), with no placeholder value at step 0 (Lightning logs -1 there);
    an evaluation run (`hparams_tab=False`) adds no row. LightningCLI's bookkeeping entries
    (`_class_path`, `_instantiator`) are not hyperparameters and are left out.

    Args:
        hparams_tab: give the run a row in TensorBoard's HPARAMS tab.
    """

    def __init__(self, *args: Any, hparams_tab: bool = True, **kwargs: Any) -> None:
        kwargs["default_hp_metric"] = False  # no -1 placeholder: the tab's values are the run's own hp_metric
        super().__init__(*args, **kwargs)
        self.hparams_tab = hparams_tab

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        params = {key: value for key, value in params.items() if not str(key).startswith("_")}
        super().log_hyperparams(params, metrics, step)  # hparams.yaml; no tab row without metrics
        if self.hparams_tab and metrics is None:
            from torch.utils.tensorboard.summary import hparams

            # Names hp_metric as the tab's metric; its values are the run's own hp_metric scalars.
            shown = {
                key: value if isinstance(value, bool | int | float | str) else str(value)
                for key, value in params.items()
            }
            for summary in hparams(shown, {"hp_metric": 0.0}):
                self.experiment.file_writer.add_summary(summary)

    @property
    def version(self) -> int | str:
        if self._version is None:
            return max((version_number(p) for p in run_folders(Path(self.root_dir))), default=-1) + 1
        return self._version

    @property
    def experiment(self):
        if self._version is None and rank_zero_only.rank == 0:
            self._version = claim_version(Path(self.root_dir))
        return super().experiment


@dataclass(frozen=True)
class RunCheckpoints:
    """The checkpoints of one run folder: its `last.ckpt`, and the best one it records."""

    folder: Path  # the run's version_N folder
    last: Path  # its checkpoints/last.ckpt

    def best(self) -> Path | None:
        """The checkpoint the run's best checkpoint callback (by `val/acc`) recorded as best in last.ckpt.

        Looked up by file name beside last.ckpt: the path recorded is the one it had when it was
        written, and the run folder may have been moved or renamed since. None where it records none.

        Raises:
            BadInput, CheckpointError: last.ckpt is gone, damaged or unsafe (resnet_lit.checkpointing).
        """
        from resnet_lit.checkpointing import load_checkpoint  # imports torch: only when asked

        for state in load_checkpoint(self.last).get("callbacks", {}).values():
            if isinstance(state, dict) and state.get("best_model_path"):  # a ModelCheckpoint's state
                best = self.last.parent / Path(state["best_model_path"]).name
                if best.is_file():
                    return best
        return None


def newest_run(root: Path) -> RunCheckpoints | None:
    """The newest run under `root/lightning_logs` with a `last.ckpt` (the one to resume), or None.

    The one lookup of a run's checkpoints: `--ckpt_path last|best` (resnet_lit.cli, resnet_lit.export)
    and the sweep's resume, finished-run and stop reports (resnet_lit.sweep) all go through it.
    """
    for folder in reversed(run_folders(Path(root) / LOGS)):
        last = folder / "checkpoints" / "last.ckpt"
        if last.is_file():
            return RunCheckpoints(folder, last)
    return None


def newest_checkpoint(root: Path, which: str) -> Path | None:
    """The newest run's `last.ckpt` ("last"), or the best checkpoint it records ("best"); None: none."""
    run = newest_run(root)
    if run is None:
        return None
    return run.last if which == "last" else run.best()
