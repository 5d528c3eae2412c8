"""Run settings Lightning accepts but that cannot do what the user means, refused before anything
is written; and the seed a run's data uses, named in its config so config.yaml says it.
"""

from typing import Any

from resnet_lit.errors import BadInput


def check_seed(config: Any) -> None:
    """Refuse a seed numpy cannot take (checked at parsing: LightningCLI seeds before instantiating)."""
    seed = config.get("seed_everything")
    if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed < 2**32:
        raise BadInput(f"--seed_everything must be from 0 to {2**32 - 1} (numpy's range), got {seed}")


def check_run_settings(subcommand: str, config: Any) -> None:
    """Refuse settings Lightning would accept but that cannot do what the user means."""
    if config.get("weights_only") is False:
        raise BadInput(
            "--weights_only false would let a checkpoint run code when it is loaded; resnet_lit's checkpoints "
            "hold plain data only, so drop the option"
        )
    if subcommand != "fit":
        return
    for key in ("max_epochs", "max_steps"):
        value = config.trainer.get(key)
        if value is not None and (value == 0 or value < -1):
            raise BadInput(f"trainer.{key} must be positive (or -1 for no limit), got {value}")
    # Lightning divides by these (a ZeroDivisionError once the run folder exists).
    for key, meaning in (
        ("accumulate_grad_batches", "batches per optimizer step"),
        ("check_val_every_n_epoch", "epochs between validations, or null with --trainer.val_check_interval"),
    ):
        value = config.trainer.get(key)
        if value is not None and value < 1:
            raise BadInput(f"trainer.{key} must be 1 or more ({meaning}), got {value}")
    interval = config.trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval == 0:
        raise BadInput(
            "trainer.val_check_interval must be positive: a fraction of an epoch (0.25) or a number of "
            "training batches (500); to skip validation, set --trainer.limit_val_batches 0"
        )
    model = config.model
    accumulate = config.trainer.get("accumulate_grad_batches") or 1
    if accumulate > 1 and model.get("compile") and model.get("compile_mode") == "reduce-overhead":
        # Each micro-batch would overwrite the graph outputs the next one accumulates into (.grad).
        raise BadInput(
            f"--trainer.accumulate_grad_batches {accumulate} cannot run with CUDA graphs (--model.compile_mode "
            "reduce-overhead): use a larger --data.batch_size instead, or --model.compile_mode default"
        )


def name_the_seed(config: Any) -> None:
    """Write the seed the data module will use (by default the global one) into the config, so config.yaml names it.

    A resumed run compares it with its checkpoint's (resnet_lit.resume).
    """
    init_args = config.data.get("init_args") if "init_args" in config.data else None
    seed = config.get("seed_everything")
    if init_args is not None and init_args.get("seed") is None and isinstance(seed, int) and not isinstance(seed, bool):
        init_args.seed = seed
