"""The paper's Fig. 6 and Table 6 from runs' TensorBoard logs.

    python -m resnet_lit.report runs/plain20 runs/plain56 runs/r20 runs/r56 --out degradation.png --table degradation.md

A RUN_DIR is a run's log folder (`lightning_logs/version_N`) or a folder holding
`lightning_logs/version_*`, whose training runs are each taken. Several event files in one
folder (a run resumed with `--ckpt_path last` appends a file) are merged: where a later file
logs a step again, its values replace the earlier file's from that step on, as TensorBoard does.
The figure: error (%) against iterations, training error thin and dashed, validation error bold,
test error a star at the run's last iteration, one colour per depth, plain nets left and
residual nets right (He et al. 2016, Fig. 6). The table is printed as Markdown (and written with
`--table`); the figure needs matplotlib (`pip install "resnet-lit[plot]"`).
"""

import argparse
import re
import statistics
import sys
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resnet_lit.errors import BadInput, say_refusal
from resnet_lit.runs import version_number

# He et al. 2016, Table 6: CIFAR-10 test error (%) of the residual nets. ResNet-110 is the best
# of 5 runs (their mean: 6.61 ± 0.16). Table 6 lists no plain nets.
PAPER_TABLE6 = {
    "resnet20": 8.75,
    "resnet32": 7.51,
    "resnet44": 7.17,
    "resnet56": 6.97,
    "resnet110": 6.43,
    "resnet1202": 7.93,
}
DATA_NAMES = {"FashionMNISTDataModule": "Fashion-MNIST", "CIFAR10DataModule": "CIFAR-10"}
SMOOTH_ITERATIONS = 250
INSTALL_PLOT = 'the figure needs matplotlib: pip install "resnet-lit[plot]" (or pip install matplotlib)'

Curve = list[tuple[int, float]]


class ReportError(BadInput):
    """A RUN_DIR that holds no run this report can read."""


@dataclass
class Run:
    """One training run: its log folder, its settings and its scalar curves."""

    name: str
    folder: Path
    hparams: dict[str, Any]
    data: str
    curves: dict[str, Curve]
    test_acc: float | None = None
    tested: str = ""  # which checkpoint the test used
    params: int = field(default=0)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.hparams.get("arch", "?"))

    @property
    def plain(self) -> bool:
        return self.arch.startswith("plain")

    @property
    def depth(self) -> int:
        digits = re.sub(r"\D", "", self.arch)
        return int(digits) if digits else 0

    @property
    def label(self) -> str:
        return f"plain-{self.depth}" if self.plain else f"ResNet-{self.depth}"

    @property
    def iterations(self) -> int:
        steps = [step for tag in ("train/acc", "train/loss", "val/acc") for step, _ in self.curves.get(tag, [])]
        return max(steps) + 1 if steps else 0


# --- reading the logs -----------------------------------------------------------------------------


def read_event_file(events: Path) -> dict[str, Curve]:
    """Every scalar tag of one TensorBoard event file, as (step, value) points in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: sorted((e.step, e.value) for e in accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"]}


def event_files(folder: Path) -> list[Path]:
    """A run folder's event files, in the order they were written."""
    return sorted(Path(folder).glob("events.out.tfevents.*"), key=_written_at)


def read_scalars(folder: Path) -> dict[str, Curve]:
    """Every scalar tag of the event files in `folder`, merged in the order they were written."""
    merged: dict[str, Curve] = {}
    for events in event_files(folder):
        for tag, points in read_event_file(events).items():
            if not points:
                continue
            first = points[0][0]  # a resumed run logs again from here: the older file's rest is stale
            merged[tag] = [p for p in merged.get(tag, []) if p[0] < first] + points
    return merged


def _written_at(events: Path) -> list[int | str]:
    """events.out.tfevents.<unix time>.<host>.<pid>.<n>: the time first, numbers compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", events.name)]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open() as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ReportError(
            f"{str(path)!r} is not valid YAML ({' '.join(str(err).split())}): repair or delete it"
        ) from err
    if not isinstance(data, dict):
        raise ReportError(f"{str(path)!r} holds {type(data).__name__}, not the settings of a run: repair or delete it")
    return data


def _is_training_run(curves: dict[str, Curve]) -> bool:
    return any(tag in curves for tag in ("train/acc", "train/loss", "val/acc"))


def _run_folders(path: Path) -> list[Path]:
    """The log folders a RUN_DIR names: itself, or its lightning_logs/version_* (numeric order)."""
    if not path.is_dir():
        raise ReportError(
            f"{str(path)!r} is not a folder; give a lightning_logs/version_N folder or one holding lightning_logs/"
        )
    if any(path.glob("events.out.tfevents.*")):
        return [path]
    versions = sorted((p for p in (path / "lightning_logs").glob("version_*") if p.is_dir()), key=version_number)
    if not versions:
        raise ReportError(
            f"{str(path)!r} holds no TensorBoard event files and no lightning_logs/version_* folders; "
            "give a run's lightning_logs/version_N folder or the folder a run was started in"
        )
    return versions


def _data_name(config: dict[str, Any]) -> str:
    data = config.get("data")
    class_path = data.get("class_path", "") if isinstance(data, dict) else ""
    name = class_path.rsplit(".", 1)[-1]
    return DATA_NAMES.get(name, name.removesuffix("DataModule") or "?")


def _find_test(folder: Path, curves: dict[str, Curve]) -> tuple[float | None, str]:
    """The test accuracy of a training run, and which checkpoint gave it.

    A `test` logged into the run's own folder wins; otherwise the newest sibling version whose
    config.yaml says it tested a checkpoint of this run (`ckpt_path: .../<this version>/checkpoints/X.ckpt`),
    which is what `python -m resnet_lit test --ckpt_path <run>/checkpoints/X.ckpt` writes.
    """
    if "test/acc" in curves:
        return curves["test/acc"][-1][1], "own folder"
    siblings = sorted((p for p in folder.parent.glob("version_*") if p.is_dir() and p != folder), key=version_number)
    for sibling in reversed(siblings):
        ckpt = _read_yaml(sibling / "config.yaml").get("ckpt_path")
        if not isinstance(ckpt, str):
            continue
        ckpt_path = Path(ckpt)
        if ckpt_path.parent.name != "checkpoints" or ckpt_path.parent.parent.name != folder.name:
            continue
        if ckpt_path.is_absolute() and ckpt_path.parent.parent.resolve() != folder.resolve():
            continue
        test = read_scalars(sibling).get("test/acc")
        if test:
            return test[-1][1], ckpt_path.stem.split("-")[0]
    return None, ""


def load_runs(paths: list[Path]) -> list[Run]:
    """The training runs in the given RUN_DIRs, with their curves, settings and test accuracy."""
    runs = []
    cache: dict[Path, dict[str, Curve]] = {}

    def curves_of(folder: Path) -> dict[str, Curve]:
        if folder not in cache:
            cache[folder] = read_scalars(folder)
        return cache[folder]

    for path in paths:
        training = [folder for folder in _run_folders(path) if _is_training_run(curves_of(folder))]
        if not training:
            raise ReportError(f"{str(path)!r} holds no training run (no train/acc or val/acc logged)")
        for folder in training:
            # Named after the folder the run was started in; with the version where it started several.
            logs, root = folder.parent, _root_of(folder)
            fits = [p for p in logs.glob("version_*") if p.is_dir() and _is_training_run(curves_of(p))]
            name = root.resolve().name
            if len(fits) > 1 or logs.name != "lightning_logs":
                name = f"{name}/{folder.name}"
            config = _read_yaml(folder / "config.yaml")
            hparams = _read_yaml(folder / "hparams.yaml") or config.get("model") or {}
            if "arch" not in hparams:
                raise ReportError(f"{str(folder)!r} has no hparams.yaml or config.yaml naming its arch")
            run = Run(name, folder, hparams, _data_name(config), curves_of(folder), config=config)
            run.test_acc, run.tested = _find_test(folder, run.curves)
            run.params = count_params(hparams)
            runs.append(run)
    return _unique_names(runs)


def _root_of(folder: Path) -> Path:
    """The run's own folder above `lightning_logs/version_N` (or the folder holding `version_N`)."""
    logs = folder.parent
    return logs.parent if logs.name == "lightning_logs" else logs


def _unique_names(runs: list[Run]) -> list[Run]:
    """Runs of the same name are told apart by the folder above theirs (shortcut-B/r20-s0), else numbered."""
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{_root_of(run.folder).resolve().parent.name}/{run.name}"
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} ({seen[run.name]})"
    return runs


def count_params(hparams: dict[str, Any]) -> int:
    """Parameters of the run's network, built from its hyperparameters (as the checkpoint would be)."""
    from resnet_lit.models import NETWORK_KEYS, build

    options = {key: hparams.get(key) for key in NETWORK_KEYS[3:]}  # after arch, in_channels, num_classes
    net = build(
        hparams["arch"],
        in_channels=int(hparams.get("in_channels", 1)),
        num_classes=int(hparams.get("num_classes", 10)),
        **options,
    )
    return sum(p.numel() for p in net.parameters())


# --- curves and the table -------------------------------------------------------------------------


def error_curve(curve: Curve) -> Curve:
    """Accuracy (0..1) to error (%)."""
    return [(step, 100 * (1 - acc)) for step, acc in curve]


def smoothed(curve: Curve, iterations: int = SMOOTH_ITERATIONS) -> Curve:
    """Trailing mean: at each logged step, the mean of the values logged in the last `iterations` iterations."""
    steps = [step for step, _ in curve]
    values = [value for _, value in curve]
    out = []
    for i, step in enumerate(steps):
        start = bisect_left(steps, step - iterations + 1)
        window = values[start : i + 1]
        out.append((step, sum(window) / len(window)))
    return out


# --- seeds -----------------------------------------------------------------------------------------

SEED_SUFFIX = re.compile(r"(.+)-s(\d+)$")  # the sweep's run names with --seeds: r20-s0, r20-s1, ...
# What may differ between the runs of one group: the seed, and where a run's files and data are.
NOT_THE_EXPERIMENT = {
    ("seed_everything",),
    ("ckpt_path",),
    ("data", "init_args", "seed"),  # follows seed_everything unless set
    ("data", "init_args", "data_dir"),
    ("data", "init_args", "download"),
    ("trainer", "default_root_dir"),
    ("trainer", "enable_progress_bar"),
}
NO_LIMIT = {("trainer", "max_epochs"), ("trainer", "max_steps")}  # null and -1 both mean no limit


@dataclass
class Group:
    """Runs that differ only in their seed (n = 1 for a run alone)."""

    name: str
    runs: list[Run]

    @property
    def first(self) -> Run:
        return self.runs[0]


def seed_of(run: Run) -> int | None:
    """The run's seed: its config's `seed_everything`, else the sweep's `-s<seed>` in its name."""
    seed = run.config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    match = SEED_SUFFIX.fullmatch(run.name)
    return int(match.group(2)) if match else None


def _experiment(run: Run) -> str:
    """The run's settings less its seed and its paths, as one comparable string."""

    def strip(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {k: strip(v, (*path, k)) for k, v in sorted(value.items()) if (*path, k) not in NOT_THE_EXPERIMENT}
        if path in NO_LIMIT and value is None:
            return -1  # a resumed run's config.yaml says -1 (its checkpoint's) where a fresh one says null
        return value

    if not run.config:  # no config.yaml: only the sweep's names say which runs are seeds of one config
        name = SEED_SUFFIX.fullmatch(run.name)
        return repr((run.hparams, run.data, run.iterations, name.group(1) if name else run.name))
    return repr((strip(run.config, ()), run.data, run.iterations))


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs whose settings are the same but for the seed, together; a run without a known seed stays alone.

    A second run with a seed already in its group (the same run twice) starts a group of its own.
    """
    groups: list[tuple[str, list[Run]]] = []
    for run in runs:
        key, seed = _experiment(run), seed_of(run)
        home = None
        if seed is not None:
            home = next((g for k, g in groups if k == key and seed not in {seed_of(r) for r in g}), None)
        if home is None:
            groups.append((key, [run]))
        else:
            home.append(run)
    return [Group(_group_name(members), members) for _, members in groups]


def _group_name(runs: list[Run]) -> str:
    if len(runs) == 1:
        return runs[0].name
    bases = {m.group(1) if (m := SEED_SUFFIX.fullmatch(run.name)) else run.name for run in runs}
    return bases.pop() if len(bases) == 1 else " + ".join(run.name for run in runs)


def mean_std(values: list[float]) -> str:
    """`12.34` for one value, `12.34 ± 0.56` (sample standard deviation) for several."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


# --- the table -----------------------------------------------------------------------------------


def run_errors(run: Run, smooth: int = SMOOTH_ITERATIONS) -> dict[str, float | None]:
    """A run's training error (trailing mean), best and final validation error and test error, in %."""
    train = smoothed(error_curve(run.curves.get("train/acc", [])), smooth)
    val = error_curve(run.curves.get("val/acc", []))
    return {
        "train error (%)": train[-1][1] if train else None,
        "best val error (%)": min(e for _, e in val) if val else None,
        "final val error (%)": val[-1][1] if val else None,
        "test error (%)": 100 * (1 - run.test_acc) if run.test_acc is not None else None,
    }


def table_rows(runs: list[Run], smooth: int = SMOOTH_ITERATIONS, by_seed: bool = True) -> list[dict[str, str]]:
    """A row per group of seeds (mean ± std and n), or with `by_seed=False` a row per run."""
    rows = []
    for group in group_runs(runs) if by_seed else [Group(run.name, [run]) for run in runs]:
        run = group.first
        paper = PAPER_TABLE6.get(run.arch)
        errors = [run_errors(member, smooth) for member in group.runs]
        row = {
            "run": group.name,
            "n": str(len(group.runs)),
            "data": run.data,
            "arch": run.arch,
            "depth": str(run.depth),
            "params": f"{run.params:,}",
            "iterations": f"{run.iterations:,}",
        }
        for column in PERCENT_COLUMNS:
            values = [e[column] for e in errors]
            row[column] = mean_std(values) if None not in values else "—"
        tested = {member.tested for member in group.runs}
        row["tested"] = tested.pop() if len(tested) == 1 and run.tested else "—"
        row["paper, CIFAR-10 (%)"] = f"{paper:.2f}" if paper is not None else "—"
        rows.append(row)
    return rows


PERCENT_COLUMNS = ("train error (%)", "best val error (%)", "final val error (%)", "test error (%)")


def _lines(rows: list[dict[str, str]]) -> list[str]:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row[key] for key in header) + " |" for row in rows]


def markdown(runs: list[Run], smooth: int = SMOOTH_ITERATIONS) -> str:
    """The table: a row per group of seeds; where a group has several, each run's row after it."""
    grouped = table_rows(runs, smooth)
    lines = _lines(grouped)
    if any(row["n"] != "1" for row in grouped):
        lines += ["", "Each run:", "", *_lines(table_rows(runs, smooth, by_seed=False))]
    notes = [
        "",
        "- n: the runs that differ only in their seed (`sweep --seeds`, or `--seed_everything`); with n > 1 "
        "every error is the mean ± the sample standard deviation over them.",
        f"- train error: mean of the `train/acc` batches logged in the last {smooth} iterations (augmented "
        "images, BatchNorm in training mode, as the paper's training curves).",
        "- val error: `val/acc` on the held-out split after each epoch; best and last.",
        "- test error: `test/acc` logged in the run's folder, else in the newest sibling `version_*` whose "
        "config.yaml `ckpt_path` is one of this run's checkpoints; `tested` names that checkpoint.",
        "- paper: He et al. 2016, Table 6, CIFAR-10 test error (ResNet-110: best of 5 runs, mean 6.61 ± 0.16); "
        "Table 6 lists no plain nets. Only comparable for runs on CIFAR-10 with the full schedule.",
    ]
    return "\n".join(lines + notes) + "\n"


# --- the figure -----------------------------------------------------------------------------------


def _mean_curve(curves: list[Curve]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, mean, smallest and largest of several runs' curves, on the first curve's steps they all reach."""
    import numpy as np

    last = min(curve[-1][0] for curve in curves)
    steps = [step for step, _ in curves[0] if step <= last]
    values = np.array([np.interp(steps, *zip(*curve, strict=True)) for curve in curves])
    return steps, list(values.mean(axis=0)), list(values.min(axis=0)), list(values.max(axis=0))


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def _colours(groups: list[Group]) -> dict[str, str]:
    """Each group's colour, by its name: one per depth, as in Fig. 6, the twins of one depth alike;
    where two groups of one depth share a panel (shortcut options A, B, C), one per group."""
    shared = len({(g.first.plain, g.first.depth) for g in groups}) < len(groups)
    if shared:
        return {group.name: PALETTE[i % len(PALETTE)] for i, group in enumerate(groups)}
    depths = sorted({group.first.depth for group in groups})
    return {group.name: PALETTE[depths.index(group.first.depth) % len(PALETTE)] for group in groups}


def plot(runs: list[Run], out: Path, smooth: int = SMOOTH_ITERATIONS, ymax: float | None = None):
    """Fig. 6's layout: plain nets left, ResNets right; dashed training error, bold validation error.

    Runs that differ only in their seed are drawn as one curve, their mean, in a band from the
    smallest to the largest of them; their test error as the mean with a bar over the same range.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    groups = group_runs(runs)
    colour = _colours(groups)
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    panels = fig.subplots(1, 2, sharex=True, sharey=True)
    finals = []
    for panel, plain, title in ((panels[0], True, "plain networks"), (panels[1], False, "residual networks")):
        members = sorted((g for g in groups if g.first.plain == plain), key=lambda g: g.first.depth)
        labels = [group.first.label for group in members]
        for group in members:
            c = colour[group.name]
            n = len(group.runs)
            label = group.first.label if labels.count(group.first.label) == 1 else f"{group.first.label} ({group.name})"
            label += f", n={n}" if n > 1 else ""
            train = [smoothed(error_curve(r.curves.get("train/acc", [])), smooth) for r in group.runs]
            val = [error_curve(r.curves.get("val/acc", [])) for r in group.runs]
            for curves, style in ((train, dict(linestyle="--", linewidth=1)), (val, dict(linewidth=2.5, label=label))):
                if not all(curves):
                    continue
                steps, mean, low, high = _mean_curve(curves)
                panel.plot(steps, mean, color=c, **style)
                if n > 1:
                    panel.fill_between(steps, low, high, color=c, alpha=0.2, linewidth=0)
                finals.append(mean[-1])
            tests = [100 * (1 - r.test_acc) for r in group.runs if r.test_acc is not None]
            if tests and len(tests) == n:
                mean = statistics.mean(tests)
                bar = [[mean - min(tests)], [max(tests) - mean]] if n > 1 else None
                x = max(group.first.iterations - 1, 0)
                panel.errorbar([x], [mean], yerr=bar, color=c, marker="*", markersize=12, linestyle="none", capsize=4)
                finals.append(mean)
        panel.set_title(title)
        panel.set_xlabel("iterations")
        panel.grid(alpha=0.3)
        if members:
            if panel.get_legend_handles_labels()[0]:  # a run with no validation yet has no labelled curve
                panel.legend(loc="upper right")
        else:
            panel.text(0.5, 0.5, "no runs", ha="center", va="center", transform=panel.transAxes, color="gray")
    panels[0].set_ylabel("error (%)")
    top = ymax if ymax is not None else min(100.0, max(5.0, 2 * max(finals, default=50.0)))
    panels[0].set_ylim(0, top)
    styles = [
        Line2D([], [], color="black", linestyle="--", linewidth=1, label=f"training (mean of last {smooth} iter.)"),
        Line2D([], [], color="black", linewidth=2.5, label="validation"),
        Line2D([], [], color="black", marker="*", markersize=10, linestyle="none", label="test"),
    ]
    if any(len(group.runs) > 1 for group in groups):
        styles.append(Patch(color="gray", alpha=0.3, label="seeds: mean, band from lowest to highest"))
    fig.legend(handles=styles, loc="outside lower center", ncols=len(styles), frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return fig


# --- the command ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_lit.report",
        description="Draw He et al. 2016's Fig. 6 (plain vs residual, error against iterations) and "
        "tabulate the runs next to its Table 6, from the runs' TensorBoard event files.",
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="a lightning_logs/version_N folder, or a folder holding lightning_logs/",
    )
    parser.add_argument("--out", type=Path, help="the figure to write (PNG, PDF, SVG: by the suffix)")
    parser.add_argument("--table", type=Path, help="also write the table to this Markdown file")
    parser.add_argument(
        "--smooth",
        type=int,
        default=SMOOTH_ITERATIONS,
        help="training error: mean of the batches logged in the last SMOOTH iterations (default %(default)s)",
    )
    parser.add_argument(
        "--ymax", type=float, help="top of the error axis in %% (default: twice the largest final error)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smooth < 1:
        return say_refusal(f"--smooth must be 1 or more iterations, got {args.smooth}")
    try:
        runs = load_runs(args.run_dirs)
    except ReportError as err:
        return say_refusal(str(err))
    table = markdown(runs, args.smooth)
    print(table, end="")
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    if args.out:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return say_refusal(INSTALL_PLOT, code=1)
        plot(runs, args.out, args.smooth, args.ymax)
        print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
