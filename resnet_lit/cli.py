"""The command line: LightningCLI wiring only (links, defaults, checkpoints); numbers live in configs/.

python -m resnet_lit fit --config configs/r50.yaml
python -m resnet_lit test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
"""

import difflib
import inspect
import logging
import os
import re
import signal
import sys
import warnings
from argparse import ArgumentError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from resnet_lit import compat, slurm
from resnet_lit.callbacks import (
    BestAndLastCheckpoint,
    EpochLines,
    ExactResume,
    LoggedValuesProgressBar,
    PredictionWriter,
    SaveOnInterrupt,
    StopOnNonFiniteLoss,
)
from resnet_lit.checkpointing import use_safe_checkpoint_io
from resnet_lit.data import FashionMNISTDataModule, InMemoryImageDataModule
from resnet_lit.errors import BadInput, NonFiniteLossError
from resnet_lit.insight import Insight
from resnet_lit.models import NETWORK_KEYS
from resnet_lit.module import ResNetClassifier
from resnet_lit.resume import (
    CheckpointSettings,
    ResumeError,
    network_differences,
    read_settings,
    resume_differences,
)
from resnet_lit.runs import (
    LOGS,
    ExclusiveTensorBoardLogger,
    claims_so_far,
    discard_claims,
    newest_checkpoint,
    release_empty_claims,
    version_number,
)

DEBUG_ENV = "RESNET_LIT_DEBUG"
LINKED = ("in_channels", "num_classes", "image_size")  # the model's, set from the data module's


class CheckpointMismatchError(BadInput):
    """The checkpoint holds a different network than the one the config asks for."""


class ResNetCLI(LightningCLI):
    """LightningCLI for ResNetClassifier and the image data modules (Fashion-MNIST by default)."""

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        self._checkpoint: CheckpointSettings | None = None
        self._resume_version: int | None = None
        self._runs = run
        self._parsers: list[LightningArgumentParser] = []  # each subcommand's, for "did you mean"
        super().__init__(
            ResNetClassifier,
            InMemoryImageDataModule,
            subclass_mode_data=True,
            # A rerun into the same log folder (resuming with --ckpt_path last) rewrites config.yaml.
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            seed_everything_default=0,  # Lightning's own fallback, without its "No seed found" warning
            # Always on, whatever callbacks a config adds (LightningCLI appends it); the others are
            # option groups below, each with its switch (resnet_lit.callbacks lists them all).
            trainer_defaults={"callbacks": [ExactResume()]},
            args=args,
            run=run,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Parsing errors raise, so main() can say them in one line instead of usage + a multi-line report.
        return super().init_parser(exit_on_error=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self._parsers.append(parser)
        parser.set_defaults({"data": {"class_path": f"{FashionMNISTDataModule.__module__}.FashionMNISTDataModule"}})
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch={epoch:03d}-val_acc={val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        # Depth 2 lists the net's stages with their input and output shapes (Table 1's check).
        parser.add_lightning_class_args(ModelSummary, "summary")
        parser.set_defaults({"summary.max_depth": 2})
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(StopOnNonFiniteLoss, "stop_on_nan")
        parser.add_lightning_class_args(SaveOnInterrupt, "save_on_interrupt")
        # Per-class accuracy, confusion matrix, most confident mistakes, model graph; --insight.enabled false: off.
        parser.add_lightning_class_args(Insight, "insight")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; where a checkpoint is given, its model and data settings become the defaults.

        So `test --ckpt_path X` alone rebuilds the network and the preprocessing it was trained
        with, and `fit --ckpt_path last` alone continues the run as it was; anything given
        explicitly still wins, and is checked against the checkpoint (`resnet_lit.resume`).
        """
        self._parse(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        seed = self.config[subcommand].get("seed_everything")  # checked here: LightningCLI seeds before instantiating
        if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed < 2**32:
            raise BadInput(f"--seed_everything must be from 0 to {2**32 - 1} (numpy's range), got {seed}")
        resolved = resolve_checkpoint(subcommand, self.config[subcommand])
        if resolved is None:
            return
        try:
            settings = read_settings(resolved.path)
        except BadInput as err:
            if resolved.named_as is None:
                raise
            raise type(err)(f"--ckpt_path {resolved.named_as}: {err}") from err
        self._checkpoint = settings
        compat.set_subcommand_defaults(self, subcommand, checkpoint_defaults(subcommand, settings))
        self._parse(parser, args)
        config = self.config[subcommand]
        config.ckpt_path = resolved.path
        self._resume_version = resolved.version  # fit --ckpt_path last: go on logging in that run's folder
        data_dir = config.data.init_args.get("data_dir") if "init_args" in config.data else None
        if settings.data_dir_missing is not None and data_dir == settings.data_dir_missing:
            raise ResumeError(
                f"{resolved.path} was trained on data in {settings.data_dir_missing!r}, which does not exist here: "
                "give the folder that holds the data with --data.data_dir"
            )

    def _parse(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            err.known_options = self.known_options()  # for main()'s "did you mean"
            raise

    def known_options(self) -> list[str]:
        """Every option the subcommands take, `--group.name`, read from their parsers.

        A data module's options (`data.init_args.batch_size` in the parser) are also given as
        users write them, `--data.batch_size`.
        """
        options: set[str] = set()
        for parser in self._parsers:
            try:
                keys = parser.get_defaults().keys()
            except Exception:  # a hint is not worth a second error: the message stands without it
                continue
            for key in keys:
                options |= {f"--{key}", f"--{key.replace('.init_args.', '.')}"}
        return sorted(options)

    def _parse_ckpt_path(self) -> None:
        """Replaced by `parse_arguments`, which lets explicit arguments win over the checkpoint.

        A private method of LightningCLI (2.6), overridden to turn it off: it would set the
        checkpoint's settings over the explicit ones. See resnet_lit.compat for the other private uses.
        """

    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        check_run_settings(subcommand, config)
        name_the_seed(config)
        if subcommand == "fit" and self._checkpoint is not None:
            unlinked = tuple(k for k in NETWORK_KEYS if k not in LINKED)  # the linked ones are checked once built
            self._refuse_other_network(network_differences(config.model, self._checkpoint.model, unlinked))
            changes = resume_differences(config, self._checkpoint)
            if changes:
                raise ResumeError(
                    f"--ckpt_path {self._checkpoint.path}: a resumed run continues with its own network, training "
                    f"settings and data, and these differ: {', '.join(changes)}; drop them to resume (more epochs "
                    "and speed settings may change), or start a new run without --ckpt_path"
                )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = (self.config_init[self.subcommand] if self.subcommand else self.config_init).get("trainer", {})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is False:
            kwargs["callbacks"] = [*callbacks, EpochLines()]  # a line per epoch in logs instead
        elif not any(isinstance(c, ProgressBar) for c in callbacks):
            # In place of Lightning's default bar, which would read a value on the host every step.
            kwargs["callbacks"] = [*callbacks, LoggedValuesProgressBar()]
        # The option groups' callbacks are always built; Lightning's own switches turn them off here.
        checkpointing = config.get("enable_checkpointing") is not False
        summary = config.get("enable_model_summary") is not False
        logger = config.get("logger") is not False
        if config.get("logger") in (None, True):
            # The default logger, as Lightning's but with a run folder of its own (config.yaml keeps
            # saying "default", so running it again makes a new run). The folder exactly as
            # Lightning's default logger names it, so ModelCheckpoint recognises its own folder on
            # resume and keeps writing last.ckpt (not last-v1.ckpt beside a stale last.ckpt).
            save_dir = os.path.normpath(os.path.expanduser(config.get("default_root_dir") or os.getcwd()))
            kwargs["logger"] = ExclusiveTensorBoardLogger(
                save_dir, name=LOGS, version=self._resume_version, hparams_tab=self.subcommand == "fit"
            )
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        cluster = slurm.cluster_environment()
        if cluster is not None and not any(isinstance(p, ClusterEnvironment) for p in plugins):
            kwargs["plugins"] = [*plugins, cluster]  # inside a SLURM allocation: resnet_lit.slurm
        kwargs["enable_checkpointing"] = True  # Lightning refuses False beside a ModelCheckpoint: removed below
        kwargs["enable_model_summary"] = False  # ours (depth 2) or none; Lightning would only say it skipped
        trainer = super().instantiate_trainer(**kwargs)  # its settings' ValueErrors: main(), _trainer_refusal
        unwanted = (
            (BestAndLastCheckpoint, not checkpointing),
            (ModelSummary, not summary),
            (LearningRateMonitor, not logger),  # it refuses to run without a logger
        )
        for kind, drop in unwanted:
            if drop:
                for callback in [c for c in trainer.callbacks if isinstance(c, kind)]:
                    trainer.callbacks.remove(callback)
        use_safe_checkpoint_io(trainer)  # atomic saves, weights-only loads
        return trainer

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        settings = self._checkpoint
        if settings is None:
            if self._runs:  # before the run writes anything: weights it refuses leave nothing on disk
                self.model.load_init_weights()  # (with run=False, the Trainer loads them when it starts)
            return
        self._refuse_other_network(network_differences(self.model.hparams, settings.model))
        check_weights_fit(settings, self.model)

    def before_fit(self) -> None:
        warning = gpu_recipe_on_cpu(self.trainer, self.model)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)

    def _refuse_other_network(self, differences: list[str]) -> None:
        if not differences:
            return
        if self.config[self.config.subcommand].get("config"):
            asked, drop = "the config asks for", "drop --config (the checkpoint rebuilds its own model and data)"
        else:
            asked, drop = "the options ask for", "drop those options"
        raise CheckpointMismatchError(
            f"{self._checkpoint.path} holds a different network than {asked}: {', '.join(differences)}; "
            f"{drop}, or give the matching checkpoint"
        )


@dataclass
class ResolvedCheckpoint:
    """A checkpoint file to start from; for `fit --ckpt_path last`, the run folder to go on logging in."""

    path: str
    version: int | None = None
    named_as: str | None = None  # "last" or "best", where the path was looked up


def resolve_checkpoint(subcommand: str, config: Namespace) -> ResolvedCheckpoint | None:
    """The checkpoint `--ckpt_path` names, as a file (None: there is none to load).

    "last": the newest run's last.ckpt, "best": the checkpoint that run's ModelCheckpoint judged best;
    `fit --ckpt_path last` goes on logging in that run's folder. Lightning itself looks for last.ckpt
    only in the new run's folder, and finding none trains (or evaluates) an untrained network
    with a warning: here that is an error. `validate`, `test` and `predict` need a checkpoint, or
    `--ckpt_path untrained` to evaluate the network as initialised.
    """
    ckpt_path = config.get("ckpt_path")
    if subcommand != "fit" and ckpt_path is None:
        raise ResumeError(
            f"{subcommand} needs trained weights: give --ckpt_path with a checkpoint file, or --ckpt_path last (or "
            "best) for the newest run's in lightning_logs/; --ckpt_path untrained evaluates an untrained network"
        )
    if ckpt_path is None or ckpt_path == "hpc" or "://" in ckpt_path:
        return None
    if ckpt_path == "untrained" and subcommand != "fit":
        config.ckpt_path = None
        return None
    if ckpt_path in ("last", "best"):
        if subcommand == "fit" and ckpt_path == "best":
            raise ResumeError("fit resumes a run from --ckpt_path last (or a checkpoint file), not from best")
        if config.trainer.logger not in (None, True):
            return None  # a logger of the user's own: Lightning's resolution applies
        root = Path(config.trainer.default_root_dir or ".")
        try:
            found = newest_checkpoint(root, ckpt_path)  # refuses a damaged or unsafe last.ckpt
        except BadInput as err:
            raise type(err)(f"--ckpt_path {ckpt_path}: {err}") from err
        if found is None:
            raise BadInput(
                f"--ckpt_path {ckpt_path}: no {root / LOGS}/version_*/checkpoints/last.ckpt"
                f"{' recording a best checkpoint' if ckpt_path == 'best' else ''} to "
                f"{'resume from' if subcommand == 'fit' else subcommand}; "
                + (
                    "run fit without --ckpt_path to start a new run, or give a checkpoint file"
                    if subcommand == "fit"
                    else "train one with fit first, or give a checkpoint file"
                )
            )
        if subcommand == "fit":
            return ResolvedCheckpoint(str(found), version_number(found.parents[1]), ckpt_path)
        return ResolvedCheckpoint(str(found), named_as=ckpt_path)
    if Path(ckpt_path).is_dir():
        raise BadInput(
            f"--ckpt_path {ckpt_path!r} is a folder, not a checkpoint file: give a .ckpt file (a run keeps them in "
            "lightning_logs/version_N/checkpoints/), or --ckpt_path last"
        )
    if not Path(ckpt_path).is_file():
        raise BadInput(f"--ckpt_path {ckpt_path!r}: no such file")
    return ResolvedCheckpoint(ckpt_path)


def checkpoint_defaults(subcommand: str, settings: CheckpointSettings) -> dict[str, Any]:
    """Parser defaults from a checkpoint: its model and data settings, and for fit its run's length."""
    defaults: dict[str, Any] = {f"model.{k}": v for k, v in settings.model.items() if k not in LINKED}
    if settings.data_class:
        data = dict(settings.data)
        # A folder named by the checkpoint is never downloaded into unless the user says so; a
        # folder that does not exist here stays the default only to be refused after parsing.
        data["download"] = False
        if settings.data_dir_missing is not None:
            data["data_dir"] = settings.data_dir_missing
        defaults["data"] = {"class_path": settings.data_class, "init_args": data}
    if subcommand == "fit":
        for key in ("max_epochs", "max_steps"):
            if key in settings.run:
                defaults[f"trainer.{key}"] = settings.run[key]
    return defaults


def check_weights_fit(settings: CheckpointSettings, model: Any) -> None:
    """Refuse a checkpoint whose tensors do not fit the network built from it (a partial or edited checkpoint)."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(expected.keys() - settings.shapes.keys())
    unexpected = sorted(settings.shapes.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & settings.shapes.keys() if expected[k] != settings.shapes[k])
    problems = []
    for what, keys in (("lacks", missing), ("has unexpected", unexpected), ("has other shapes for", wrong)):
        if keys:
            problems.append(f"{what} {len(keys)} tensor(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise ResumeError(
            f"{settings.path} does not fit the {model.hparams.arch} it describes: its state_dict "
            f"{'; '.join(problems)}; give a complete checkpoint that python -m resnet_lit fit wrote"
        )


def name_the_seed(config: Namespace) -> None:
    """Write the seed the data module will use (by default the global one) into the config, so config.yaml names it."""
    init_args = config.data.get("init_args") if "init_args" in config.data else None
    seed = config.get("seed_everything")
    if init_args is not None and init_args.get("seed") is None and isinstance(seed, int) and not isinstance(seed, bool):
        init_args.seed = seed


def check_run_settings(subcommand: str, config: Namespace) -> None:
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


def main(args: ArgsType = None) -> None:
    """Entry point of `python -m resnet_lit`; bad input ends in one line, not a traceback.

    Exit status: 2 refused input, 1 training diverged, 143 stopped by SIGTERM and 130 by
    Ctrl-C (after saving last.ckpt).
    """
    # The data sets live in memory and a batch is one tensor index: worker processes would only
    # add copies, so num_workers=0 is deliberate and Lightning's hint about it is noise here.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_lightning_notices)
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # inside Lightning 2.6 itself
    global _claims_before_main
    _claims_before_main = claims_so_far()  # only this call's run folder is removed on a refusal
    try:
        cli = _run_stopping_at_signals(args)
        if cli.subcommand == "fit":
            print(fit_summary(cli.trainer))
    except SIGTERMException as stop:
        discard_claims(_claims_before_main)  # a run folder without a checkpoint: nothing to continue from
        raise SystemExit(130 if getattr(stop, "signal_name", "") == "Ctrl-C" else 128 + signal.SIGTERM) from None
    except ArgumentError as err:
        known = getattr(err, "known_options", [])
        _refuse(err, _argument_message(str(err), known), "--help lists the options", status=2)
    except NonFiniteLossError as err:
        _refuse(err, str(err), f"set {DEBUG_ENV}=1 for the traceback", status=1)
    except (BadInput, MisconfigurationException) as err:  # the project's refusals, and Lightning's of its settings
        _refuse(err, str(_cause(err)), f"set {DEBUG_ENV}=1 for the traceback", status=2)
    except ValueError as err:
        # jsonargparse reports a data module that refused its arguments as a value of the wrong type.
        refusal = _refusal_within(err) or _union_refusal(str(err)) or _trainer_refusal(err)
        if refusal is None:
            raise  # not bad input: a bug, with its traceback
        _refuse(err, str(refusal), f"set {DEBUG_ENV}=1 for the traceback", status=2)
    except OSError as err:  # the disk is full, a folder read-only: checkpoints are written atomically, so none is lost
        where = f" ({err.filename})" if err.filename else ""
        _refuse(
            err,
            f"could not write{where}: {err.strerror or err}; the files already on disk are intact",
            f"set {DEBUG_ENV}=1 for the traceback",
            status=1,
        )
    finally:
        release_empty_claims()  # a run folder made for a run that was then refused


def _run_stopping_at_signals(args: ArgsType) -> ResNetCLI:
    """`ResNetCLI(args)`; an error that SaveOnInterrupt put down to a signal becomes that stop."""
    try:
        return ResNetCLI(args=args)
    except Exception as err:
        if not getattr(err, "signal_name", None):
            raise
        stop = SIGTERMException()
        stop.signal_name = err.signal_name
        raise stop from err


# Lightning's notices that say nothing about the run: advertising, and "no GPU" on a machine
# without one. Matched exactly; "GPU available: True, used: False" (a GPU left idle) still shows.
QUIET_NOTICES = (
    re.compile(r"💡 Tip: .*"),
    re.compile(r"GPU available: False, used: False"),
    re.compile(r"TPU available: False, using: 0 TPU cores"),
)


def _drop_lightning_notices(record: logging.LogRecord) -> bool:
    return not any(pattern.fullmatch(str(record.getMessage())) for pattern in QUIET_NOTICES)


def gpu_recipe_on_cpu(trainer: Trainer, model: ResNetClassifier) -> str | None:
    """One line when a GPU recipe (CUDA graphs: compile mode reduce-overhead; configs/gpu/) runs on a CPU."""
    hp = model.hparams
    if trainer.strategy.root_device.type != "cpu" or not (hp.compile and hp.compile_mode == "reduce-overhead"):
        return None
    bf16 = " and bf16-mixed (emulated, and slower, on a CPU without AMX)" if "bf16" in str(trainer.precision) else ""
    return (
        f"a GPU recipe is running on a CPU: compile mode reduce-overhead{bf16}; its CUDA graphs do nothing here, "
        "compiling takes a minute or more before the first step, and the run is far slower than the CPU "
        "configs (configs/*.yaml); stop it with Ctrl-C unless that is what you want"
    )


def fit_summary(trainer: Trainer) -> str:
    """One closing line of a fit: where its run folder is, its best checkpoint, and what to run next."""
    folder = _short(trainer.log_dir or trainer.default_root_dir)
    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    if not best:
        return f"fit: done; run folder {folder} (no checkpoint written)"
    score = getattr(checkpoint, "best_model_score", None)
    monitor = getattr(checkpoint, "monitor", None) or "score"
    said = f" ({monitor} {score.item():.4f})" if score is not None else ""
    best = _short(best)
    next_ = f"python -m resnet_lit test --ckpt_path {best}"
    return f"fit: done; run folder {folder}; best checkpoint {best}{said}; next: {next_}"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _short(path: str) -> str:
    """`path` relative to the working folder where it lies below it, else as it is."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


_claims_before_main = 0


def _refuse(err: BaseException, message: str, hint: str, status: int) -> None:
    if status == 2:
        discard_claims(since=_claims_before_main)  # refused input: the run folder made for it goes too
    if os.environ.get(DEBUG_ENV):
        raise err
    print(f"error: {' '.join(message.split())} ({hint})", file=sys.stderr)
    raise SystemExit(status) from None


def _trainer_refusal(err: ValueError) -> str | None:
    """Lightning's check of a Trainer setting (`num_nodes` must be ..., `val_check_interval` (N) must be ...).

    Raised when the Trainer is built, or once it has the data (after the run folder is made, which
    the refusal then removes).
    """
    named = re.match(r"\s*`(\w+)`", str(err))
    if named and named.group(1) in inspect.signature(Trainer.__init__).parameters:
        return f"--trainer.{named.group(1)}: {_first_line(err).strip()}"
    return None


def _refusal_within(err: BaseException) -> BadInput | None:
    """The project's refusal that caused `err`, following its causes; None where there is none."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, BadInput):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _union_refusal(message: str) -> str | None:
    """The class's own refusal inside jsonargparse's "Does not validate against any of the Union subtypes"."""
    if "Does not validate against any of the Union subtypes" not in message:
        return None
    errors = message.split("Errors:", 1)[-1].split("Given value type:", 1)[0]
    reasons = [line.strip()[2:] for line in errors.splitlines() if line.strip().startswith("- ")]
    reasons = [r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    return reasons[0] if reasons else None


def _cause(err: BaseException) -> BaseException:
    """jsonargparse reports a class that refused its arguments as a Union-type mismatch; the refusal says more."""
    while "Does not validate against any of the Union subtypes" in str(err):
        inner = err.__cause__ or err.__context__
        if not isinstance(inner, Exception):
            break
        err = inner
    return err


def _argument_message(message: str, known: list[str]) -> str:
    """jsonargparse's multi-line errors in one line: `--key expects float, got 'abc'`, `did you mean --model.arch?`.

    For a data module's option (`--data.download flase`) jsonargparse reports the option's parent
    (`data`) with the real error nested under it: the innermost key and its own error are the ones
    that say what is wrong. tests/test_cli.py checks each rewrite against the installed jsonargparse.
    """
    # "Option 'x' is not accepted" (jsonargparse >= 4.41), "Key 'x' is not expected" (before).
    unaccepted = r"""Parser key "(\w+)":.*?(?:Option|Key) '([\w.]+)' is not (?:accepted|expected)"""
    nested = re.search(unaccepted, message, re.DOTALL)
    if nested:  # an unknown option of the data module, reported by its parent option
        message = f"unrecognized arguments: --{nested.group(1)}.{nested.group(2)}"
    unknown = re.match(r"unrecognized arguments: (\S+)", message, re.IGNORECASE)  # "Unrecognized" before 4.41
    if unknown:
        message = "unrecognized" + message[len("unrecognized") :]
        option = unknown.group(1).split("=", 1)[0]
        group, _, name = option.partition(".")
        # The same group's options by their names (--model.archh: --model.arch, --data.random_erasing:
        # --data.erasing), else the whole option (--modle.arch: --model.arch); a close prefix alone
        # (--model.depth, --model.tta) is no match.
        names = [k.partition(".")[2] for k in known if k.startswith(f"{group}.")]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.75) if name else []
        close = close or [n for n in names if name and "." not in n and name.endswith(f"_{n}")][:1]
        close = [f"{group}.{n}" for n in close] or difflib.get_close_matches(option, known, n=1, cutoff=0.9)
        return message + (f"; did you mean {close[0]}?" if close else "")
    keys = re.findall(r'Parser key "([^"]+)":', message)
    if not keys:
        return message
    inner = re.split(r"\n\s*- ", message[message.rfind(f'Parser key "{keys[-1]}":') :])[0]  # not the other Union types
    expected = re.findall(r"Expected a <class '([\w.]+)'>", inner)
    given = re.search(r"(?:Given|Got) value: (.*)", inner)
    if not (expected and given):
        return message
    key = keys[-1] if len(keys) == 1 or keys[-1].startswith(f"{keys[0]}.") else f"{keys[0]}.{keys[-1]}"
    types = " or ".join(dict.fromkeys("null" if name == "NoneType" else name for name in expected))
    return f"--{key} expects {types}, got {given.group(1).strip()!r}"
