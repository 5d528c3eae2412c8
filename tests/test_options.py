"""Every numeric option of `fit`, at 0, a negative value, a huge value and NaN: it works, or it is
refused in one line (exit 2) with nothing on disk. No traceback, no run folder left by a refusal.

The options are read from the parser itself (the Trainer's, the model's, each callback group's)
and from the data module's signature, so a new option is walked without editing this file.
"""

import contextlib
import inspect
import io
import typing

import pytest

from resnet_lit.cli import ResNetCLI, main
from resnet_lit.data import FashionMNISTDataModule

# Options the walk leaves out, and why.
NOT_WALKED = {
    "--trainer.devices": "a device list or count: 0 and -1 are Lightning's 'none' and 'all'",
    "--trainer.max_time": "a duration string",
    "--model.milestones": "a list (its values are checked with model.step_size)",
    "--data.mean": "a list",
    "--data.std": "a list",
}
# (option, value) pairs that work as documented but not within a test.
NOT_WITHIN_A_TEST = {
    ("--trainer.num_nodes", "1000000000"): "waits for a billion machines to join, as any multi-node run"
}
# A run that starts and then stops on a non-finite loss (exit 1, one line, its folder kept) is the
# NaN guard working: an lr of 1e30 is accepted, and diverges.
DIVERGES = "the training loss is"


def _numeric(hint) -> bool:
    if hint in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(hint))


def numeric_options() -> dict[str, bool]:
    """`--group.name` of every option taking a number, and whether it takes a float."""
    parsers = []

    class Recording(ResNetCLI):
        def add_arguments_to_parser(self, parser):
            super().add_arguments_to_parser(parser)
            parsers.append(parser)

    with contextlib.suppress(BaseException), contextlib.redirect_stderr(io.StringIO()):
        Recording(args=["fit", "--not-an-option"])  # builds the parsers, then refuses
    options = {}
    for action in parsers[0]._actions:  # argparse's list of the parser's options
        hint = getattr(action, "_typehint", None) or action.type
        if action.option_strings and hint is not None and _numeric(hint):
            options[action.option_strings[0]] = float in _flat(hint)
    for name, parameter in inspect.signature(FashionMNISTDataModule.__init__).parameters.items():
        if parameter.annotation is not inspect.Parameter.empty and _numeric(parameter.annotation):
            options[f"--data.{name}"] = float in _flat(parameter.annotation)
    return {option: floats for option, floats in options.items() if option not in NOT_WALKED}


def _flat(hint) -> set:
    args = typing.get_args(hint)
    return set().union(*(_flat(a) for a in args)) if args else {hint}


@pytest.mark.slow  # about 150 short runs in-process
def test_every_numeric_option_at_zero_negative_huge_and_nan_works_or_is_refused_in_one_line(
    tmp_path, fashion_root, monkeypatch
):
    options = numeric_options()
    assert {"--trainer.max_epochs", "--trainer.accumulate_grad_batches", "--model.lr", "--data.batch_size"} <= set(
        options
    )
    base = ["fit", "--model.arch=resnet8", f"--data.data_dir={fashion_root}", "--data.download=false"]
    base += ["--data.val_size=100", "--data.batch_size=50", "--trainer.max_epochs=1", "--trainer.max_steps=2"]
    base += ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    base += ["--insight.enabled=false"]
    problems = []
    for option, floats in options.items():
        for value in ("0", "-1", "1e30" if floats else "1000000000", "nan"):
            if (option, value) in NOT_WITHIN_A_TEST or (value == "nan" and not floats):
                continue
            work = tmp_path / f"{option.strip('-')}={value}"
            work.mkdir()
            monkeypatch.chdir(work)
            err, code = io.StringIO(), 0
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    main([*base, f"{option}={value}"])
                except SystemExit as stop:
                    code = stop.code
                except Exception as exception:  # what the walk looks for
                    code = f"{type(exception).__name__}: {exception}"
            lines = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
            left = [p for p in work.rglob("*") if p.is_file()]
            case = f"{option}={value}"
            if isinstance(code, str):
                problems.append(f"{case}: traceback ({code[:120]})")
            elif code == 2 and (len(lines) != 1 or left):
                problems.append(f"{case}: refused with {len(lines)} error lines and {len(left)} files left")
            elif code not in (0, None, 2) and not (code == 1 and len(lines) == 1 and DIVERGES in lines[0]):
                problems.append(f"{case}: exit {code}: {lines[-1] if lines else ''}")
    assert not problems, "\n".join(problems)
