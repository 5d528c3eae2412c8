"""resnet_lit.insight: per-class accuracy, confusion matrix, most confident mistakes, through the CLI."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FAST, has_graph, images, scalars

from resnet_lit.cli import ResNetCLI, main
from resnet_lit.data import FashionMNISTDataModule
from resnet_lit.drawing import render_confusion, render_mistakes
from resnet_lit.insight import ConfidentMistakes, Insight, format_table, tag_name

CLASSES = FashionMNISTDataModule.classes
N_TEST = 200  # the stand-in test set (tests/conftest.py)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fashion_root) -> tuple[Path, str]:
    """One short fit (2 epochs of 4 steps) shared by this file: its run folder, checkpoint and stdout."""
    root = tmp_path_factory.mktemp("fit")
    args = [
        "fit",
        "--model.arch=resnet8",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=4",
        f"--trainer.default_root_dir={root}",
        f"--data.data_dir={fashion_root}",
        "--data.download=false",
        "--data.val_size=100",
        "--data.batch_size=50",
        *FAST,
    ]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(sys, "argv", ["resnet_lit"])
        ResNetCLI(args=args)
    run = root / "lightning_logs" / "version_0"
    return run, out.getvalue()


def evaluate(subcommand: str, fitted, root: Path, *extra: str) -> tuple[ResNetCLI, Path]:
    run, _ = fitted
    ckpt = run / "checkpoints" / "last.ckpt"
    cli = ResNetCLI(args=[subcommand, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={root}", *FAST, *extra])
    return cli, root / "lightning_logs" / "version_0"


def insight(cli: ResNetCLI) -> Insight:
    return next(c for c in cli.trainer.callbacks if isinstance(c, Insight))


def test_fit_logs_per_class_val_accuracy_the_confusion_matrix_and_the_graph(fitted):
    run, stdout = fitted
    tags = scalars(run)
    for name in CLASSES:
        assert len(tags[f"val/acc_per_class/{tag_name(name)}"]) == 2, name  # one per epoch
    assert "val/acc_per_class/T-shirt_top" in tags and "val/acc_per_class/Ankle_boot" in tags
    logged = images(run)
    assert len(logged["val/confusion_matrix"]) == 2
    assert "test/misclassified" not in logged
    assert has_graph(run)
    assert (run / "confusion_val.png").is_file()
    assert "per-class accuracy" not in stdout  # the table is for validate and test, not every epoch


def test_test_logs_per_class_scalars_the_matrix_and_the_mistakes_and_prints_the_table(fitted, tmp_path, capsys):
    cli, run = evaluate("test", fitted, tmp_path, "--insight.misclassified=1000")
    matrix = insight(cli).matrices["test"]
    assert matrix.shape == (10, 10)
    assert matrix.sum().item() == N_TEST
    assert matrix.sum(dim=1).tolist() == [N_TEST // 10] * 10  # rows are the true classes
    assert matrix.diag().sum().item() / N_TEST == pytest.approx(cli.trainer.callback_metrics["test/acc"].item())

    tags = scalars(run)
    recall = (matrix.diag() / matrix.sum(dim=1)).tolist()
    for name, expected in zip(CLASSES, recall, strict=True):
        assert tags[f"test/acc_per_class/{tag_name(name)}"][-1][1] == pytest.approx(expected), name

    logged = images(run)
    assert set(logged) >= {"test/confusion_matrix", "test/misclassified"}
    _, confusion = logged["test/confusion_matrix"][-1]
    assert confusion.size == render_confusion(matrix, CLASSES, "x").size  # drawn by the exported function
    for png in ("confusion_test.png", "misclassified_test.png"):
        assert (run / png).is_file(), png

    # With room for every mistake, the grid holds exactly the wrong answers of all 4 batches.
    mistakes = insight(cli).mistakes
    assert len(mistakes["confidence"]) == N_TEST - matrix.diag().sum().item()
    assert torch.all(mistakes["predicted"] != mistakes["target"])
    assert mistakes["confidence"].tolist() == sorted(mistakes["confidence"].tolist(), reverse=True)

    out = capsys.readouterr().out
    assert f"test: per-class accuracy, {N_TEST} images" in out
    for name in CLASSES:
        assert f"  {name} " in out, name


def test_the_mistakes_are_the_models_most_confident_wrong_answers(fitted, tmp_path):
    cli, _ = evaluate("test", fitted, tmp_path, "--insight.misclassified=5")
    model, data = cli.model.eval(), cli.datamodule
    confidence, predicted, target = [], [], []
    with torch.no_grad():
        for images_, targets in data.test_dataloader():
            probs = model(data.preprocess(images_)).softmax(dim=1)
            best, guess = probs.max(dim=1)
            confidence.append(best), predicted.append(guess), target.append(targets)
    confidence, predicted, target = torch.cat(confidence), torch.cat(predicted), torch.cat(target)
    wrong = predicted != target
    expected = confidence[wrong].sort(descending=True).values[:5]
    kept = insight(cli).mistakes
    assert kept["confidence"] == pytest.approx(expected, abs=1e-5)
    # Each kept image is what the model gets wrong, with that confidence.
    with torch.no_grad():
        again = model(kept["images"]).softmax(dim=1).max(dim=1)
    assert again.indices.tolist() == kept["predicted"].tolist()
    assert again.values == pytest.approx(kept["confidence"], abs=1e-5)


def test_validate_prints_the_table_and_logs_the_val_matrix(fitted, tmp_path, capsys):
    cli, run = evaluate("validate", fitted, tmp_path)
    assert insight(cli).matrices["val"].sum().item() == 100  # --data.val_size of the checkpoint
    assert "val/confusion_matrix" in images(run) and "val/misclassified" not in images(run)
    assert "val/acc_per_class/Coat" in scalars(run)
    assert "val: per-class accuracy, 100 images" in capsys.readouterr().out


def test_insight_enabled_false_turns_it_all_off(fitted, tmp_path, capsys):
    cli, run = evaluate("test", fitted, tmp_path, "--insight.enabled=false")
    assert "test/acc" in cli.trainer.callback_metrics
    assert not [tag for tag in scalars(run) if "per_class" in tag]
    assert images(run) == {}
    assert not list(run.glob("*.png"))
    assert "per-class accuracy" not in capsys.readouterr().out


def test_during_fit_false_leaves_the_epochs_alone(in_tmp, data_args):
    one_step = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
    ResNetCLI(args=["fit", "--model.arch=resnet8", *one_step, *FAST, *data_args, "--insight.during_fit=false"])
    run = in_tmp / "lightning_logs" / "version_0"
    assert "val/acc" in scalars(run)
    assert not [tag for tag in scalars(run) if "per_class" in tag]
    assert images(run) == {} and not list(run.glob("*.png"))
    assert has_graph(run)  # the graph is a separate switch


def test_a_negative_number_of_mistakes_is_refused_in_one_line(fitted, tmp_path, capsys):
    run, _ = fitted
    with pytest.raises(SystemExit) as info:
        main(["test", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--insight.misclassified=-1", *FAST])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "insight.misclassified must be 0 or more, got -1" in err[0]


def test_confident_mistakes_keep_the_top_k_across_batches():
    torch.manual_seed(0)
    keeper = ConfidentMistakes(k=7)
    all_logits, all_targets = torch.randn(90, 10) * 3, torch.randint(0, 10, (90,))
    for start in range(0, 90, 16):  # uneven batches, the last one of 10
        batch = slice(start, start + 16)
        pixels = torch.arange(start, min(start + 16, 90)).float().view(-1, 1, 1, 1)  # image i holds i
        keeper.update(pixels, all_logits[batch], all_targets[batch])
    confidence, predicted = all_logits.softmax(dim=1).max(dim=1)
    wrong = (predicted != all_targets).nonzero().squeeze(1)
    expected = wrong[confidence[wrong].argsort(descending=True)[:7]]
    buffers = keeper.buffers
    assert buffers["images"].flatten().long().tolist() == expected.tolist()
    assert buffers["target"].tolist() == all_targets[expected].tolist()
    assert buffers["predicted"].tolist() == predicted[expected].tolist()


def test_the_table_names_what_each_class_is_mistaken_for():
    matrix = torch.tensor([[8, 2, 0], [0, 10, 0], [1, 3, 6]])
    table = format_table(matrix, ["cat", "dog", "T-shirt/top"], "test")
    lines = table.splitlines()
    assert lines[0] == "test: per-class accuracy, 30 images, accuracy 0.8000"
    assert lines[2].split() == ["cat", "10", "0.8000", "dog", "(2)"]
    assert lines[3].split() == ["dog", "10", "1.0000", "-"]
    assert lines[4].split() == ["T-shirt/top", "10", "0.6000", "dog", "(3)"]


def test_the_figures_draw_any_channels_and_empty_cases():
    labels = {"predicted": torch.tensor([1, 2, 0]), "target": torch.tensor([0, 0, 1]), "confidence": torch.rand(3)}
    gray = render_mistakes(torch.randn(3, 1, 28, 28), **labels, classes=["a", "b", "c"], columns=2)
    colour = render_mistakes(torch.rand(3, 3, 32, 32), **labels, classes=["a", "b", "c"], columns=2)
    assert gray.size == colour.size and gray.mode == colour.mode == "RGB"
    nothing = {key: value[:0] for key, value in labels.items()}
    assert render_mistakes(torch.zeros(0, 1, 28, 28), **nothing, classes=["a"]).height > 0
    # A class without images gets "-" for its accuracy instead of a failure.
    assert render_confusion(torch.tensor([[5, 1], [0, 0]]), ["seen", "unseen"], "title").mode == "RGB"


@pytest.mark.slow  # two processes (DDP on CPU, gloo), about 30 s on 2 cores
def test_ddp_syncs_the_matrix_and_gathers_the_mistakes(fitted, tmp_path):
    run, _ = fitted
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [
        sys.executable, "-m", "resnet_lit", "test", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        f"--trainer.default_root_dir={tmp_path}", "--insight.misclassified=1000", *FAST,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"test: per-class accuracy, {N_TEST} images" in done.stdout  # both halves, counted once
    assert done.stdout.count("per-class accuracy") == 1  # printed by rank 0 only
    # The same numbers and the same mistakes (as many, so the same grid size) as on one process.
    _, one_run = evaluate("test", fitted, tmp_path / "one", "--insight.misclassified=1000")
    ddp_run = tmp_path / "lightning_logs" / "version_0"
    for name in CLASSES:
        tag = f"test/acc_per_class/{tag_name(name)}"
        assert scalars(ddp_run)[tag][-1][1] == pytest.approx(scalars(one_run)[tag][-1][1]), name
    ddp_grid = images(ddp_run)["test/misclassified"][-1][1]
    assert ddp_grid.size == images(one_run)["test/misclassified"][-1][1].size
