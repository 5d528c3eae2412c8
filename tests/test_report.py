"""The report: event files the tests write themselves, and two real short runs on the stand-in data."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from matplotlib.collections import PolyCollection
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from resnet_lit import report
from resnet_lit.cli import main as cli_main
from resnet_lit.models import build


def write_events(folder: Path, scalars: dict[str, list[tuple[int, float]]]) -> None:
    """One event file, as one (possibly resumed) process writes it."""
    writer = SummaryWriter(str(folder))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def same(curve, expected) -> bool:
    """Same steps, values equal to float32 precision (event files store float32)."""
    return [s for s, _ in curve] == [s for s, _ in expected] and [v for _, v in curve] == pytest.approx(
        [v for _, v in expected]
    )


def fake_run(root: Path, version: int, arch: str = "resnet20", **scalars) -> Path:
    """lightning_logs/version_N with hparams.yaml, config.yaml and the given scalar curves."""
    folder = root / "lightning_logs" / f"version_{version}"
    folder.mkdir(parents=True)
    hparams = {"arch": arch, "in_channels": 1, "num_classes": 10, "shortcut": None, "stem": None}
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    config = {"model": {"arch": arch}, "data": {"class_path": "resnet_lit.FashionMNISTDataModule"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    write_events(folder, {tag.replace("_", "/"): points for tag, points in scalars.items()})
    return folder


def fake_test(root: Path, version: int, ckpt_path: str, acc: float) -> Path:
    """What `python -m resnet_lit test --ckpt_path X` leaves: config.yaml naming X, and test/acc."""
    folder = root / "lightning_logs" / f"version_{version}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"ckpt_path": ckpt_path, "model": {"arch": "resnet20"}}))
    write_events(folder, {"test/acc": [(0, acc)], "test/loss": [(0, 0.5)]})
    return folder


# --- reading event files ----------------------------------------------------------------------------


def test_reads_the_scalars_a_writer_wrote(tmp_path):
    write_events(tmp_path, {"train/acc": [(0, 0.1), (50, 0.4), (100, 0.6)], "val/acc": [(99, 0.55)]})
    curves = report.read_scalars(tmp_path)
    assert same(curves["train/acc"], [(0, 0.1), (50, 0.4), (100, 0.6)])
    assert same(curves["val/acc"], [(99, 0.55)])


def test_a_resumed_run_merges_its_event_files_later_file_wins_from_its_first_step(tmp_path):
    # The first process logged up to step 150 but its last checkpoint was at step 100: the resumed
    # process logs 100.. again, so the first file's 100 and 150 are stale.
    write_events(tmp_path, {"train/acc": [(0, 0.1), (50, 0.2), (100, 0.3), (150, 0.4)], "val/acc": [(99, 0.25)]})
    write_events(tmp_path, {"train/acc": [(100, 0.35), (150, 0.45), (200, 0.5)], "val/acc": [(199, 0.5)]})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    curves = report.read_scalars(tmp_path)
    assert same(curves["train/acc"], [(0, 0.1), (50, 0.2), (100, 0.35), (150, 0.45), (200, 0.5)])
    assert same(curves["val/acc"], [(99, 0.25), (199, 0.5)])


def test_event_files_are_merged_in_the_order_they_were_written(tmp_path):
    for name, value in (
        ("events.out.tfevents.1700000010.host.7.0", 0.9),
        ("events.out.tfevents.1700000009.host.7.0", 0.1),
    ):
        scratch = tmp_path / "scratch"
        write_events(scratch, {"val/acc": [(0, value)]})
        next(scratch.glob("events.*")).rename(tmp_path / name)
    assert same(report.read_scalars(tmp_path)["val/acc"], [(0, 0.9)])  # 1700000010 is the later one


# --- finding runs and their tests ---------------------------------------------------------------------


def test_a_folder_of_versions_and_a_version_folder_give_the_same_run_and_its_test(tmp_path):
    root = tmp_path / "r20"
    fit = fake_run(root, 0, train_acc=[(0, 0.1), (10, 0.5)], val_acc=[(9, 0.4), (19, 0.6)])
    fake_test(root, 1, "lightning_logs/version_0/checkpoints/best-epoch=001-val_acc=0.6000.ckpt", acc=0.62)
    for given in (root, fit):
        [run] = report.load_runs([given])
        assert run.name == "r20" and run.folder == fit and run.arch == "resnet20"
        assert run.test_acc == pytest.approx(0.62) and run.tested == "best"
        assert run.params == sum(p.numel() for p in build("resnet20", in_channels=1, num_classes=10).parameters())


def test_each_training_run_of_a_folder_gets_its_own_test(tmp_path):
    fake_run(tmp_path, 0, "plain20", train_acc=[(0, 0.1)], val_acc=[(9, 0.3)])
    fake_run(tmp_path, 1, "plain56", train_acc=[(0, 0.1)], val_acc=[(9, 0.2)])
    fake_test(tmp_path, 2, str(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt"), acc=0.25)
    runs = report.load_runs([tmp_path])
    assert [(r.name.split("/")[-1], r.arch) for r in runs] == [("version_0", "plain20"), ("version_1", "plain56")]
    assert runs[0].test_acc is None and runs[1].test_acc == pytest.approx(0.25) and runs[1].tested == "last"


def test_a_test_of_another_folders_checkpoint_is_not_taken(tmp_path):
    fake_run(tmp_path / "a", 0, val_acc=[(9, 0.3)])
    fake_test(tmp_path / "a", 1, str(tmp_path / "b/lightning_logs/version_0/checkpoints/last.ckpt"), acc=0.9)
    [run] = report.load_runs([tmp_path / "a"])
    assert run.test_acc is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nowhere", "is not a folder"),
        (lambda p: p, "holds no TensorBoard event files"),
        (lambda p: fake_test(p, 0, "x.ckpt", 0.5).parents[1], "holds no training run"),
        (lambda p: _broken(fake_run(p, 0, train_acc=[(0, 0.1)]), "hparams.yaml", "model: [unclosed"), "not valid YAML"),
        (lambda p: _broken(fake_run(p, 0, train_acc=[(0, 0.1)]), "config.yaml", "- a list"), "holds list, not the"),
        (lambda p: _broken(fake_run(p, 0, train_acc=[(0, 0.1)]), "events.out.tfevents.0.x", ""), None),
    ],
    ids=["missing", "empty", "only a test", "malformed hparams.yaml", "config.yaml of another shape", "empty events"],
)
def test_bad_run_dirs_end_in_one_line_and_exit_2(tmp_path, capsys, make, message):
    code = report.main([str(make(tmp_path)), "--out", str(tmp_path / "fig.png")])
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:  # an empty event file beside good ones: read what is there
        assert code == 0, err
        return
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "fig.png").exists()


def _broken(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder


# --- curves and table -------------------------------------------------------------------------------


def test_training_error_is_a_trailing_mean_over_iterations():
    curve = [(0, 90.0), (50, 70.0), (100, 50.0), (400, 10.0)]
    assert same(report.smoothed(curve, iterations=101), [(0, 90), (50, 80), (100, 70), (400, 10)])
    assert same(report.smoothed(curve, iterations=1), curve)


def test_table_has_errors_in_percent_and_the_papers_number(tmp_path):
    fake_run(
        tmp_path / "r20", 0, train_acc=[(0, 0.2), (300, 0.8), (400, 0.9)], val_acc=[(99, 0.7), (199, 0.85), (299, 0.8)]
    )
    fake_run(tmp_path / "p20", 0, "plain20", val_acc=[(99, 0.5)])
    fake_test(tmp_path / "r20", 1, "lightning_logs/version_0/checkpoints/last.ckpt", acc=0.9125)
    runs = report.load_runs([tmp_path / "r20", tmp_path / "p20"])
    rows = report.table_rows(runs, smooth=250)
    r20, p20 = rows
    assert r20["train error (%)"] == "15.00"  # mean of 80% and 90% accuracy, the batches in the last 250 iterations
    assert (r20["best val error (%)"], r20["final val error (%)"], r20["test error (%)"]) == ("15.00", "20.00", "8.75")
    assert r20["paper, CIFAR-10 (%)"] == "8.75" and r20["params"] == "269,434" and r20["iterations"] == "401"
    assert p20["paper, CIFAR-10 (%)"] == "—" and p20["test error (%)"] == "—" and p20["train error (%)"] == "—"
    assert r20["n"] == p20["n"] == "1"
    text = report.markdown(runs)
    assert text.splitlines()[0].startswith("| run | n | data | arch | depth | params |")
    assert "He et al. 2016, Table 6" in text


def test_without_matplotlib_the_table_prints_and_one_line_says_how_to_install(tmp_path, capsys, monkeypatch):
    fake_run(tmp_path / "r20", 0, val_acc=[(9, 0.5)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code = report.main([str(tmp_path / "r20"), "--out", str(tmp_path / "fig.png"), "--table", str(tmp_path / "t.md")])
    assert code == 1
    out, err = capsys.readouterr()
    assert "| r20 |" in out and (tmp_path / "t.md").is_file()
    assert err.strip() == f"error: {report.INSTALL_PLOT}" and 'pip install "resnet-lit[plot]"' in err
    assert not (tmp_path / "fig.png").exists()


# --- two real short runs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, fashion_root) -> Path:
    """plain8 and resnet8, one epoch each on the stand-in, each tested on its best checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    data = [f"--data.data_dir={fashion_root}", "--data.download=false", "--data.val_size=100", "--data.batch_size=50"]
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["resnet_lit"])
        for arch in ("plain8", "resnet8"):
            out = f"--trainer.default_root_dir={root / arch}"
            fit = ["--model.arch", arch, "--trainer.max_epochs=2", "--trainer.log_every_n_steps=2"]
            cli_main(["fit", *fit, *data, *quiet, out])
            [best] = (root / arch / "lightning_logs/version_0/checkpoints").glob("best-*.ckpt")
            cli_main(["test", f"--ckpt_path={best}", *data, *quiet, out])
    return root


@pytest.mark.slow  # trains two nets for 2 epochs each
def test_report_on_two_short_runs_writes_a_png_and_the_table(two_runs, tmp_path, capsys):
    out, table = tmp_path / "figs" / "degradation.png", tmp_path / "degradation.md"
    runs = [str(two_runs / "plain8"), str(two_runs / "resnet8" / "lightning_logs" / "version_0")]
    assert report.main([*runs, "--out", str(out), "--table", str(table)]) == 0
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (1440, 576)  # 12 x 4.8 inches at 120 dpi
        assert len(png.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # drawn, not blank
    text = table.read_text()
    assert capsys.readouterr().out.startswith(text)
    rows = [
        line.split(" | ") for line in text.splitlines() if line.startswith("| plain8") or line.startswith("| resnet8")
    ]
    assert [row[3] for row in rows] == ["plain8", "resnet8"]
    for row in rows:
        assert row[1] == "1" and row[2] == "Fashion-MNIST" and row[6] == "20"  # n = 1; 2 epochs of 10 batches
        assert all(0 <= float(v) <= 100 for v in row[7:11])  # train, best val, final val, test error
        assert row[11] == "best"


@pytest.mark.slow  # shares the runs above
def test_python_m_resnet_lit_report(two_runs, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "resnet_lit.report", str(two_runs / "resnet8"), "--out", str(tmp_path / "f.png")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| resnet8 | 1 | Fashion-MNIST | resnet8 | 8 |" in done.stdout
    assert (tmp_path / "f.png").stat().st_size > 10_000


def _seeded(root: Path, name: str, seed: int | None, arch: str = "resnet20", test: float | None = None, **curves):
    folder = fake_run(root / name, 0, arch, **curves)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["trainer"] = {"default_root_dir": str(root / name), "max_steps": 400}
    if seed is not None:
        config["seed_everything"] = seed
        config["data"]["init_args"] = {"seed": seed, "data_dir": f"/somewhere/{seed}"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if test is not None:
        fake_test(root / name, 1, "lightning_logs/version_0/checkpoints/best.ckpt", acc=test)
    return root / name


def test_runs_that_differ_only_in_their_seed_are_one_row_with_mean_std_and_n(tmp_path):
    val = {"val_acc": [(99, 0.9), (199, 0.92)]}
    paths = [
        _seeded(tmp_path, "r20-s0", 0, test=0.92, **val),
        _seeded(tmp_path, "r20-s1", 1, test=0.90, **val),
        _seeded(tmp_path, "other-name", 2, test=0.91, **val),  # the same settings, seed 2: the same group
        _seeded(tmp_path, "r56-s0", 0, "resnet56", test=0.93, **val),
        _seeded(tmp_path, "again-s0", 0, test=0.5, **val),  # seed 0 again: another group, not a seed
        _seeded(tmp_path, "unseeded", None, test=0.5, **val),
    ]
    runs = report.load_runs(paths)
    groups = report.group_runs(runs)
    assert [(g.name, len(g.runs)) for g in groups] == [
        ("r20-s0 + r20-s1 + other-name", 3), ("r56-s0", 1), ("again-s0", 1), ("unseeded", 1)
    ]  # fmt: skip
    rows = report.table_rows(runs)
    assert rows[0]["n"] == "3" and rows[1]["n"] == "1"
    assert rows[0]["test error (%)"] == "9.00 ± 1.00"  # 8, 10 and 9
    assert rows[0]["final val error (%)"] == "8.00 ± 0.00" and rows[1]["test error (%)"] == "7.00"
    text = report.markdown(runs)
    assert text.splitlines()[0].startswith("| run | n | data | arch |")
    assert "Each run:" in text and "| r20-s1 | 1 |" in text  # the members, after the groups
    assert report.seed_of(runs[0]) == 0 and report.seed_of(runs[-1]) is None


def test_seeds_named_by_the_sweep_share_their_name(tmp_path):
    val = {"val_acc": [(99, 0.9)]}
    runs = report.load_runs([_seeded(tmp_path, f"r20-s{seed}", seed, **val) for seed in (1, 2)])
    (group,) = report.group_runs(runs)
    assert group.name == "r20" and report.markdown(runs).count("| r20 | 2 |") == 1


def test_runs_of_the_same_name_in_two_studies_are_named_by_their_study(tmp_path):
    val = {"val_acc": [(99, 0.9)]}
    paths = [_seeded(tmp_path / study, f"r20-s{seed}", seed, **val) for study in ("A", "B") for seed in (1, 2)]
    for path in paths[2:]:  # study B: another shortcut, another experiment
        config_file = path / "lightning_logs/version_0/config.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["model"]["shortcut"] = "B"
        config_file.write_text(yaml.safe_dump(config))
    groups = report.group_runs(report.load_runs(paths))
    assert [g.name for g in groups] == ["A/r20", "B/r20"]


def test_a_band_per_group_of_seeds_in_the_figure(tmp_path):
    def curves(seed: int) -> dict:
        train = [(0, 0.1), (100, 0.5 + seed / 10), (200, 0.8)]
        return {"train_acc": train, "val_acc": [(99, 0.5), (199, 0.8 + seed / 50)]}

    seeds = [_seeded(tmp_path, f"r20-s{seed}", seed, test=0.9 + seed / 100, **curves(seed)) for seed in (0, 1, 2)]
    runs = report.load_runs([*seeds, _seeded(tmp_path, "p20", 0, "plain20", val_acc=[(99, 0.4), (199, 0.6)])])
    figure = report.plot(runs, tmp_path / "fig.png")
    plain, residual = figure.axes[:2]
    bands = [c for c in residual.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # around the training and the validation curve
    assert not [c for c in plain.collections if isinstance(c, PolyCollection)]  # a run alone: no band
    from_steps = bands[1].get_paths()[0].vertices[:, 1]
    assert min(from_steps) == pytest.approx(16.0) and max(from_steps) == pytest.approx(50.0)  # lowest to highest
    (val,) = [line for line in residual.lines if line.get_linewidth() == 2.5]
    assert val.get_label() == "ResNet-20, n=3"
    assert list(val.get_ydata()) == pytest.approx([50.0, 18.0])  # the mean of 20, 18 and 16


def test_colours_follow_depth_and_groups_of_one_depth_get_their_own(tmp_path):
    val = {"val_acc": [(99, 0.5), (199, 0.8)]}
    twins = [_seeded(tmp_path / "d", name, 0, arch, **val) for name, arch in (("r20", "resnet20"), ("p20", "plain20"))]
    twins.append(_seeded(tmp_path / "d", "r56", 0, "resnet56", **val))
    lines = _validation_lines(report.plot(report.load_runs(twins), tmp_path / "depths.png"))
    assert lines["plain-20"] == lines["ResNet-20"] != lines["ResNet-56"]  # Fig. 6: one colour per depth
    options = []
    for option in ("A", "B", "C"):  # three shortcut options of ResNet-20: one panel, three colours
        options.append(_seeded(tmp_path / option, "r20", 0, **val))
        config_file = options[-1] / "lightning_logs/version_0/config.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["model"]["shortcut"] = option
        config_file.write_text(yaml.safe_dump(config))
    lines = _validation_lines(report.plot(report.load_runs(options), tmp_path / "options.png"))
    assert len(lines) == 3 and len(set(lines.values())) == 3, lines


def _validation_lines(figure) -> dict[str, str]:
    """Each validation curve's label and colour."""
    lines = [line for panel in figure.axes[:2] for line in panel.lines if line.get_linewidth() == 2.5]
    return {line.get_label(): line.get_color() for line in lines}


def test_a_resumed_seed_joins_its_group(tmp_path):
    """A run resumed with --ckpt_path last records its checkpoint's -1 (no epoch limit) where a fresh one says null."""
    val = {"val_acc": [(99, 0.9), (199, 0.92)]}
    fresh = _seeded(tmp_path, "r56-s0", 0, "resnet56", **val)
    resumed = _seeded(tmp_path, "r56-s1", 1, "resnet56", **val)
    for path, limit in ((fresh, None), (resumed, -1)):
        config_file = path / "lightning_logs/version_0/config.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["trainer"]["max_epochs"] = limit
        config_file.write_text(yaml.safe_dump(config))
    groups = report.group_runs(report.load_runs([fresh, resumed]))
    assert [(g.name, len(g.runs)) for g in groups] == [("r56", 2)]  # one group: the seeds share their name
