"""resnet_lit.refusals.refusal: an exception as one line, from the installed jsonargparse's and Lightning's errors.

Each error comes from the real parser or class, so a release that rewords its messages fails here
(CI runs this file on the oldest and the newest jsonargparse).
"""

from argparse import ArgumentError

import pytest
from lightning.pytorch import Trainer

from resnet_lit.cli import ResNetCLI
from resnet_lit.errors import BadInput
from resnet_lit.refusals import refusal


def refused(*args: str, subcommand: str = "fit") -> tuple[BaseException, list[str]]:
    """The exception ResNetCLI raises for `args`, and the options the parser knew."""
    with pytest.raises(Exception) as info:
        ResNetCLI(args=[subcommand, *args] if subcommand else list(args), run=bool(subcommand))
    return info.value, getattr(info.value, "known_options", [])


PARSER_ERRORS = {
    "a float": (["--model.lr=abc"], "--model.lr expects float, got 'abc'"),
    "a data module's bool": (["--data.download=flase"], "--data.download expects bool, got 'flase'"),
    "an int or null": (["--trainer.max_epochs=abc"], "--trainer.max_epochs expects int or null, got 'abc'"),
    "a misspelt option": (["--model.archh=x"], "unrecognized arguments: --model.archh=x; did you mean --model.arch?"),
    "a misspelt group": (["--modle.arch", "x"], "unrecognized arguments: --modle.arch x; did you mean --model.arch?"),
    "an option like none": (["--model.depth=20"], "unrecognized arguments: --model.depth=20"),
    "a data module's": (
        ["--data.batchsize=3"],
        "unrecognized arguments: --data.batchsize; did you mean --data.batch_size?",
    ),
    "a callback switch": (
        ["--save_on_interupt.enabled=false"],
        "unrecognized arguments: --save_on_interupt.enabled=false; did you mean --save_on_interrupt.enabled?",
    ),
}


@pytest.mark.parametrize("args, expected", PARSER_ERRORS.values(), ids=PARSER_ERRORS)
def test_a_parser_error_is_one_line_naming_the_option_and_the_nearest_known_one(args, expected):
    err, options = refused(*args)
    assert isinstance(err, ArgumentError)
    assert refusal(err, options) == expected


def test_the_did_you_mean_names_come_from_the_parser():
    err, options = refused("--model.archh=x")
    assert {"--model.arch", "--data.batch_size", "--stop_on_nan.enabled", "--insight.enabled"} <= set(options)
    assert refusal(err) == "unrecognized arguments: --model.archh=x"  # no options given, no guess


def test_what_it_does_not_recognise_is_the_librarys_own_message_in_one_line(tmp_path):
    err, options = refused(f"--config={tmp_path / 'nothere.yaml'}")
    line = refusal(err, options)
    assert "\n" not in line and "nothere.yaml" in line and line == " ".join(str(err).split())
    err, options = refused("--model.schedule=bogus")  # a Literal's values: no "expects" guessed from its types
    assert refusal(err, options) == " ".join(str(err).split()) and "model.schedule" in refusal(err, options)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.batch_size=0"], "data.batch_size must be positive, got 0"),  # inside jsonargparse's Union report
        (["--model.lr=0"], "model.lr must be positive and finite, got 0.0"),
    ],
)
def test_a_class_that_refused_its_arguments_is_its_own_message(args, expected):
    err, _ = refused(*args, subcommand="")
    assert refusal(err) == expected


def test_the_projects_refusal_inside_another_error_is_the_message():
    try:
        try:
            raise BadInput("data.val_size must be positive, got 0")
        except BadInput:
            raise ValueError("a library's wrapper") from None  # the refusal stays the context
    except ValueError as err:
        assert refusal(err) == "data.val_size must be positive, got 0"


def test_lightnings_check_of_a_trainer_setting_is_named_as_its_option_and_other_value_errors_are_bugs():
    with pytest.raises(ValueError) as info:
        Trainer(num_nodes=0)
    assert refusal(info.value) == f"--trainer.num_nodes: {info.value}"
    assert refusal(ValueError("`weights` is not a tensor")) is None  # not a Trainer argument
    assert refusal(ValueError("an internal error")) is None  # main() shows its traceback
