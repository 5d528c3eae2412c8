"""The product through its own entry point: `python -m resnet_lit fit/test/validate/predict`."""

import csv
from pathlib import Path

import pytest
import torch
from helpers import FAST, hparams_plugin, scalars

from resnet_lit.cli import ResNetCLI, main
from resnet_lit.data import FashionMNISTDataModule

CONFIGS = Path(__file__).parents[1] / "configs"


def fit(data_args, *extra: str, epochs: int = 1) -> ResNetCLI:
    return ResNetCLI(args=["fit", "--model.arch=resnet8", f"--trainer.max_epochs={epochs}", *FAST, *data_args, *extra])


def test_fit_writes_checkpoints_config_and_tensorboard_tags(in_tmp, data_args):
    cli = fit(data_args, epochs=2)
    run = in_tmp / "lightning_logs" / "version_0"
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("best-epoch=") and "val_acc=" in name for name in checkpoints)
    assert (run / "config.yaml").is_file()
    tags = scalars(run)
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "hp_metric"):
        assert tag in tags, tag
    assert len(tags["val/acc"]) == 2
    # hp_metric (the hparams view's metric) is the best val/acc so far, from the first validation on:
    # no placeholder at step 0 (Lightning's -1).
    best = max(v for _, v in tags["val/acc"])
    assert tags["hp_metric"][-1][1] == pytest.approx(best)
    assert [step for step, _ in tags["hp_metric"]] == [step for step, _ in tags["val/acc"]]
    tab = hparams_plugin(run)
    assert b"hp_metric" in tab and b"arch" in tab and b"_instantiator" not in tab and b"_class_path" not in tab
    assert cli.model.hparams.in_channels == 1 and cli.model.hparams.num_classes == 10  # linked from the data


def test_without_progress_bar_each_epoch_prints_one_line(in_tmp, data_args, capsys):
    fit(data_args, "--trainer.max_steps=13", epochs=2)  # 10 steps an epoch: stops inside epoch 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("epoch 1/2, step 10/13: train/loss") and "val/acc" in lines[0], lines
    # Epoch 2 stopped before its validation: epoch 1's val/acc must not pass for its own.
    assert lines[1].startswith("epoch 2/2, step 13/13: train/loss") and "val/" not in lines[1], lines


def test_test_with_only_a_checkpoint_rebuilds_model_and_preprocessing(in_tmp, data_args):
    fit(data_args, "--model.arch=plain8", "--data.resize=32", "--data.normalize=false")
    run = in_tmp / "lightning_logs" / "version_0"
    ckpt = str(run / "checkpoints" / "last.ckpt")

    alone = ResNetCLI(args=["test", f"--ckpt_path={ckpt}", *FAST])
    assert alone.model.hparams.arch == "plain8"
    assert alone.datamodule.hparams.resize == 32 and alone.datamodule.hparams.normalize is False
    assert alone.model.example_input_array.shape[-1] == 32
    with_config = ResNetCLI(args=["test", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}", *FAST])
    acc = alone.trainer.callback_metrics["test/acc"].item()
    assert acc == with_config.trainer.callback_metrics["test/acc"].item()

    validated = ResNetCLI(args=["validate", f"--ckpt_path={ckpt}", *FAST])
    assert "val/acc" in validated.trainer.callback_metrics
    # Evaluations add no row to TensorBoard's HPARAMS tab (they would show hp_metric -1).
    for version in ("version_1", "version_2", "version_3"):
        assert hparams_plugin(in_tmp / "lightning_logs" / version) == b""


def test_an_explicit_setting_that_contradicts_the_checkpoint_is_refused(in_tmp, data_args, capsys):
    fit(data_args)
    ckpt = "lightning_logs/version_0/checkpoints/last.ckpt"
    before = sorted(p.name for p in (in_tmp / "lightning_logs").iterdir())
    with pytest.raises(SystemExit) as info:
        main(["test", f"--ckpt_path={ckpt}", "--model.arch=resnet14", *FAST])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arch='resnet14' (checkpoint: 'resnet8')" in err[0]
    assert sorted(p.name for p in (in_tmp / "lightning_logs").iterdir()) == before


@pytest.mark.slow  # trains more than once, or for several epochs
def test_fit_ckpt_path_last_resumes_the_newest_run_in_its_own_folder(in_tmp, data_args):
    first = fit(data_args, epochs=1)
    steps_per_epoch = first.trainer.global_step
    assert steps_per_epoch == 10  # 500 training images, batches of 50
    saved = torch.load("lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)

    resumed = fit(data_args, "--ckpt_path=last", epochs=2)
    assert resumed.trainer.ckpt_path.endswith("version_0/checkpoints/last.ckpt")
    assert resumed.trainer.global_step == 2 * steps_per_epoch  # it went on: one more epoch, not two
    assert not (in_tmp / "lightning_logs" / "version_1").exists()
    val_steps = [step for step, _ in scalars(in_tmp / "lightning_logs" / "version_0")["val/acc"]]
    assert val_steps == [steps_per_epoch - 1, 2 * steps_per_epoch - 1]
    # The resumed run began from the saved weights: its first steps were not a fresh start.
    assert saved["global_step"] == steps_per_epoch


@pytest.mark.slow  # trains more than once, or for several epochs
def test_last_checkpoint_follows_every_epoch_even_when_the_best_does_not_change(in_tmp, data_args):
    # Monitoring the epoch number with mode "min" makes epoch 0 the best for good: the later
    # epochs write no top-k checkpoint, which is when Lightning 2.6 would leave last.ckpt behind.
    fit(data_args, "--checkpoint.monitor=epoch", "--checkpoint.mode=min", epochs=3)
    checkpoints = in_tmp / "lightning_logs" / "version_0" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 30)
    assert [p.name[:15] for p in checkpoints.glob("best-*.ckpt")] == ["best-epoch=000-"]

    resumed = fit(data_args, "--checkpoint.monitor=epoch", "--checkpoint.mode=min", "--ckpt_path=last", epochs=4)
    assert resumed.trainer.global_step == 40  # one more epoch after the third, not after the first
    # Its state is stored under Lightning's own ModelCheckpoint key, and restored: epoch 0 is still the best.
    state = torch.load(checkpoints / "last.ckpt", weights_only=True)["callbacks"]
    (key,) = [key for key in state if "best_model_path" in state[key]]
    assert key.startswith("ModelCheckpoint{")
    assert Path(state[key]["best_model_path"]).name.startswith("best-epoch=000-")


def test_fit_ckpt_path_last_without_a_previous_run_is_an_error(in_tmp, data_args, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--ckpt_path=last", "--model.arch=resnet8", *FAST, *data_args])
    assert "no lightning_logs/version_*/checkpoints/last.ckpt to resume from" in capsys.readouterr().err


@pytest.mark.slow  # trains more than once, or for several epochs
def test_a_second_run_in_the_same_folder_does_not_crash(in_tmp, data_args):
    fit(data_args)
    fit(data_args)
    assert (in_tmp / "lightning_logs" / "version_1" / "config.yaml").is_file()


def test_predict_writes_classes_with_their_names(in_tmp, data_args):
    fit(data_args)
    ckpt = "lightning_logs/version_0/checkpoints/last.ckpt"
    ResNetCLI(args=["predict", f"--ckpt_path={ckpt}", "--predictions.path=preds.csv", *FAST])
    with open(in_tmp / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 200
    assert rows[0].keys() == {"index", "source", "predicted", "class_name", "confidence", "target"}
    assert rows[3]["source"] == "test/3"
    for row in rows:
        assert row["class_name"] == FashionMNISTDataModule.classes[int(row["predicted"])]
        assert 0.0 < float(row["confidence"]) <= 1.0


def test_missing_data_ends_in_one_line_and_exit_2(in_tmp, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--data.data_dir=nowhere", "--data.download=false", *FAST])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "Fashion-MNIST is not in 'nowhere/FashionMNIST/raw'" in err[0]


def test_help_shows_the_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "the network, by name" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--data.help=FashionMNISTDataModule"])
    assert "held out of the official training set" in capsys.readouterr().out


@pytest.mark.slow  # about 30 s on 2 cores: 8 short epochs of ResNet-20
def test_r20_config_learns_on_standin_data(in_tmp, data_args):
    args = ["fit", f"--config={CONFIGS / 'r20.yaml'}", "--trainer.max_epochs=8", *FAST, *data_args]
    cli = ResNetCLI(args=[*args, "--data.batch_size=20"])  # 25 steps an epoch
    assert cli.model.val_acc_best.compute().item() > 0.5  # chance is 0.1


# jsonargparse's errors, rewritten into one line: each rewrite against the installed version.
ARGUMENT_ERRORS = {
    "a float option": (["--model.lr=abc"], "--model.lr expects float, got 'abc'"),
    "a data module's bool": (["--data.download=flase"], "--data.download expects bool, got 'flase'"),
    "a data module's int": (["--data.val_size=1e9"], "--data.val_size expects int, got '1000000000.0'"),
    "a misspelt option": (
        ["--model.archh=resnet8"],
        "unrecognized arguments: --model.archh=resnet8; did you mean --model.arch?",
    ),
    "an unknown option": (["--model.depth=20"], "unrecognized arguments: --model.depth=20 (--help"),
    "a misspelt data option": (
        ["--data.batchsize=3"],
        "unrecognized arguments: --data.batchsize; did you mean --data.batch_size?",
    ),
    # every option group is known: the names come from the parser, not from a list of classes
    "a misspelt callback switch": (
        ["--stop_on_nan.enabeld=false"],
        "unrecognized arguments: --stop_on_nan.enabeld=false; did you mean --stop_on_nan.enabled?",
    ),
    "a misspelt callback group": (
        ["--save_on_interupt.enabled=false"],
        "unrecognized arguments: --save_on_interupt.enabled=false; did you mean --save_on_interrupt.enabled?",
    ),
    "a longer name for a data option": (
        ["--data.random_erasing=0.5"],
        "unrecognized arguments: --data.random_erasing; did you mean --data.erasing?",
    ),
}


@pytest.mark.parametrize("args, expected", ARGUMENT_ERRORS.values(), ids=ARGUMENT_ERRORS)
def test_argument_errors_name_the_option_in_one_line(in_tmp, capsys, args, expected):
    with pytest.raises(SystemExit) as info:
        main(["fit", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {expected}")


def test_fit_says_where_its_results_are_and_no_notice_a_user_learns_to_ignore(
    in_tmp, data_args, capsys, caplog, recwarn
):
    main(["fit", "--model.arch=resnet8", "--trainer.max_epochs=1", *FAST, *data_args])
    out, err = capsys.readouterr()
    said = out + err + caplog.text
    best = next((in_tmp / "lightning_logs/version_0/checkpoints").glob("best-*.ckpt"))
    last_line = out.strip().splitlines()[-1]
    assert last_line.startswith("fit: done; run folder lightning_logs/version_0; best checkpoint ")
    assert f"next: python -m resnet_lit test --ckpt_path lightning_logs/version_0/checkpoints/{best.name}" in last_line
    for noise in ("Skipping setting a default `ModelSummary`", "💡", "GPU available: False", "TPU available"):
        assert noise not in said, noise
    deprecations = [str(w.message) for w in recwarn if "deprecat" in str(w.message).lower()]
    assert not [d for d in deprecations if "jsonargparse" in d.lower() or "skip_none" in d or "instantiat" in d]


def test_predict_says_where_it_wrote(in_tmp, data_args, capsys):
    fit(data_args)
    main(["predict", "--ckpt_path=last", "--predictions.path=p.csv", *FAST])
    assert "predict: 200 predictions written to p.csv" in capsys.readouterr().out


def test_a_gpu_recipe_on_a_cpu_says_so_in_one_line_before_training(in_tmp, data_args, capsys):
    for config, warns in (("gpu/r20.yaml", True), ("r20.yaml", False)):
        cli = ResNetCLI(
            args=[f"--config={CONFIGS / config}", "--trainer.accelerator=cpu", *FAST, *data_args], run=False
        )
        cli.before_fit()  # what fit runs first
        err = capsys.readouterr().err.strip().splitlines()
        if warns:
            assert len(err) == 1 and err[0].startswith("warning: a GPU recipe is running on a CPU: compile mode")
            assert "bf16-mixed" in err[0]
        else:
            assert not err


def test_cuda_graphs_refuse_gradient_accumulation_in_one_line(in_tmp, data_args, capsys):
    from helpers import refused

    graphs = ["--model.compile=true", "--model.compile_mode=reduce-overhead"]
    short = ["--trainer.max_steps=1", "--trainer.limit_val_batches=0"]  # if it were not refused
    line = refused(capsys, ["fit", *graphs, "--trainer.accumulate_grad_batches=2", *short, *FAST, *data_args])
    assert "--trainer.accumulate_grad_batches 2 cannot run with CUDA graphs" in line
    assert not (in_tmp / "lightning_logs").exists()


def test_every_step_marks_a_new_cuda_graph_step_training_evaluation_and_prediction(in_tmp, data_args, monkeypatch):
    # On a CPU the marks are what can be checked: the graphs themselves run in tests/test_gpu.py.
    from resnet_lit.module import ResNetClassifier

    marks: list[str] = []
    monkeypatch.setattr(ResNetClassifier, "_graphs", property(lambda self: True))
    cli = ResNetCLI(args=["--model.arch=resnet8", "--trainer.max_epochs=1", *FAST, *data_args], run=False)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(cli.trainer.state.stage))
    limits = {"limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 2, "limit_predict_batches": 2}
    for name, value in limits.items():
        setattr(cli.trainer, name, value)
    cli.trainer.num_sanity_val_steps = 0
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    counts = {stage: marks.count(stage) for stage in dict.fromkeys(marks)}
    assert counts == {"train": 3, "validate": 2, "test": 2, "predict": 2}, counts
