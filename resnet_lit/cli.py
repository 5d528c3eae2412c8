"""The command line: LightningCLI wiring only (links, defaults, checkpoints); numbers live in configs/.

python -m resnet_lit fit --config configs/r50.yaml
python -m resnet_lit test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
"""

import os
import re
import signal
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from resnet_lit.callbacks import BestAndLastCheckpoint, PredictionWriter
from resnet_lit.checkpointing import load_checkpoint, use_safe_checkpoint_io
from resnet_lit.data import FashionMNISTDataModule, InMemoryImageDataModule, MissingDataError
from resnet_lit.guards import NonFiniteLossError, SaveOnInterrupt, StopOnNonFiniteLoss
from resnet_lit.insight import Insight
from resnet_lit.loaders import RestoreLoaderPosition
from resnet_lit.module import ResNetClassifier

# Hyperparameters that decide the network's tensors: a checkpoint only loads into a net that agrees.
ARCH_KEYS = ("arch", "in_channels", "num_classes", "shortcut", "stem")
DEBUG_ENV = "RESNET_LIT_DEBUG"


class CheckpointMismatchError(ValueError):
    """The checkpoint holds a different network than the one the config asks for."""


class ResNetCLI(LightningCLI):
    """LightningCLI for ResNetClassifier and the image data modules (Fashion-MNIST by default)."""

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        self._checkpoint_hparams: dict[str, Any] | None = None
        super().__init__(
            ResNetClassifier,
            InMemoryImageDataModule,
            subclass_mode_data=True,
            # A rerun into the same log folder (resuming with --ckpt_path last) rewrites config.yaml.
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            seed_everything_default=0,  # Lightning's own fallback, without its "No seed found" warning
            # Always on, whatever callbacks a config adds (LightningCLI appends these).
            trainer_defaults={"callbacks": [StopOnNonFiniteLoss(), SaveOnInterrupt(), RestoreLoaderPosition()]},
            args=args,
            run=run,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Parsing errors raise, so main() can say them in one line instead of usage + a multi-line report.
        return super().init_parser(exit_on_error=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": f"{FashionMNISTDataModule.__module__}.FashionMNISTDataModule"}})
        for key in ("in_channels", "num_classes", "image_size"):
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
        # Per-class accuracy, confusion matrix, most confident mistakes, model graph; --insight.enabled false: off.
        parser.add_lightning_class_args(Insight, "insight")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; where a checkpoint file is given, its model and data settings become the defaults.

        So `test --ckpt_path X` alone rebuilds the network and the preprocessing it was trained
        with, while anything given explicitly still wins (and is checked against the checkpoint).
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in ("last", "best", "hpc") or "://" in ckpt_path:
            return
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path!r}: no such file")
        hparams, data_class, data_hparams = read_checkpoint_settings(ckpt_path)
        self._checkpoint_hparams = hparams
        linked = ("in_channels", "num_classes", "image_size")  # these follow the data
        defaults = {f"model.{k}": v for k, v in hparams.items() if k not in linked}
        if data_class:
            defaults["data"] = {"class_path": data_class, "init_args": data_hparams}
        parser._subcommands_action._name_parser_map[subcommand].set_defaults(defaults)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Replaced by `parse_arguments`, which lets explicit arguments win over the checkpoint."""

    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand is not None:
            check_run_settings(subcommand, self.config[subcommand])
        if subcommand == "fit" and self.config.fit.ckpt_path == "last":
            resolve_last_checkpoint(self.config.fit)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_safe_checkpoint_io(trainer)  # atomic saves, weights-only loads
        return trainer

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self._checkpoint_hparams is not None:
            ckpt_path = self.config[self.config.subcommand].ckpt_path
            check_matches_checkpoint(self.model.hparams, self._checkpoint_hparams, ckpt_path)


def read_checkpoint_settings(path: str) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """The model's hyperparameters, the data module's class path and its hyperparameters.

    LightningCLI stores the data module's class as `_class_path` among its hyperparameters.
    """
    checkpoint = load_checkpoint(path)
    hparams = _public(checkpoint.get("hyper_parameters", {}))
    data_hparams = checkpoint.get("datamodule_hyper_parameters", {})
    return hparams, data_hparams.get("_class_path"), _public(data_hparams)


def _public(hparams: dict[str, Any]) -> dict[str, Any]:
    """Init arguments only, without the `_class_path` / `_instantiator` bookkeeping."""
    return {key: value for key, value in hparams.items() if not key.startswith("_")}


def check_matches_checkpoint(model_hparams: Any, ckpt_hparams: dict[str, Any], ckpt_path: str) -> None:
    differences = [
        f"{key}={model_hparams.get(key)!r} (checkpoint: {ckpt_hparams[key]!r})"
        for key in ARCH_KEYS
        if key in ckpt_hparams and model_hparams.get(key) != ckpt_hparams[key]
    ]
    if differences:
        raise CheckpointMismatchError(
            f"{ckpt_path} holds a different network than the config asks for: {', '.join(differences)}; "
            "drop --config (the checkpoint rebuilds its own model and data) or give the matching checkpoint"
        )


def check_run_settings(subcommand: str, config: Namespace) -> None:
    """Refuse settings Lightning would accept but that cannot do what the user means."""
    if config.get("weights_only") is False:
        raise ValueError(
            "--weights_only false would let a checkpoint run code when it is loaded; resnet_lit's checkpoints "
            "hold plain data only, so drop the option"
        )
    if subcommand != "fit":
        return
    for key in ("max_epochs", "max_steps"):
        value = config.trainer.get(key)
        if value is not None and (value == 0 or value < -1):
            raise ValueError(f"trainer.{key} must be positive (or -1 for no limit), got {value}")


def resolve_last_checkpoint(config: Namespace) -> None:
    """`fit --ckpt_path last`: the newest run's last.ckpt, continuing in that run's log folder.

    Lightning itself looks for last.ckpt only in the *new* run's folder, finds nothing and
    silently trains from scratch; here a missing checkpoint is an error instead.
    """
    logger = config.trainer.logger
    if logger not in (None, True):
        return  # a logger of the user's own: Lightning's resolution applies
    root = Path(config.trainer.default_root_dir or ".") / "lightning_logs"
    versions = sorted(
        (int(m.group(1)), p) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))
    )
    for version, folder in reversed(versions):
        last = folder / "checkpoints" / "last.ckpt"
        if last.is_file():
            try:
                load_checkpoint(last)  # refuse a damaged or unsafe one now, before anything is written
            except ValueError as err:
                raise type(err)(f"--ckpt_path last: {err}") from err
            config.ckpt_path = str(last)
            # The folder exactly as Lightning's default logger names it, so ModelCheckpoint recognises
            # its own folder and keeps writing last.ckpt (not last-v1.ckpt beside a stale last.ckpt).
            save_dir = os.path.normpath(os.path.expanduser(config.trainer.default_root_dir or os.getcwd()))
            config.trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": save_dir, "name": "lightning_logs", "version": version},
            }
            return
    raise FileNotFoundError(
        f"--ckpt_path last: no {root}/version_*/checkpoints/last.ckpt to resume from; "
        "run fit without --ckpt_path to start a new run, or give a checkpoint file"
    )


def main(args: ArgsType = None) -> None:
    """Entry point of `python -m resnet_lit`; bad input ends in one line, not a traceback.

    Exit status: 2 refused input, 1 training diverged, 143 stopped by SIGTERM and 130 by
    Ctrl-C (after saving last.ckpt).
    """
    # The data sets live in memory and a batch is one tensor index: worker processes would only
    # add copies, so num_workers=0 is deliberate and Lightning's hint about it is noise here.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # inside Lightning 2.6 itself
    try:
        ResNetCLI(args=args)
    except SIGTERMException as stop:
        raise SystemExit(130 if getattr(stop, "signal_name", "") == "Ctrl-C" else 128 + signal.SIGTERM) from None
    except ArgumentError as err:
        _refuse(err, _argument_message(str(err)), "--help lists the options", status=2)
    except NonFiniteLossError as err:
        _refuse(err, str(err), f"set {DEBUG_ENV}=1 for the traceback", status=1)
    except (ValueError, MissingDataError, FileNotFoundError, MisconfigurationException) as err:
        _refuse(err, str(_cause(err)), f"set {DEBUG_ENV}=1 for the traceback", status=2)


def _refuse(err: BaseException, message: str, hint: str, status: int) -> None:
    if os.environ.get(DEBUG_ENV):
        raise err
    print(f"error: {' '.join(message.split())} ({hint})", file=sys.stderr)
    raise SystemExit(status) from None


def _cause(err: BaseException) -> BaseException:
    """jsonargparse reports a class that refused its arguments as a Union-type mismatch; the refusal says more."""
    while "Does not validate against any of the Union subtypes" in str(err):
        inner = err.__cause__ or err.__context__
        if not isinstance(inner, Exception):
            break
        err = inner
    return err


def _argument_message(message: str) -> str:
    """jsonargparse's multi-line type error as `--key expects float, got 'abc'`; other messages as they are."""
    key = re.match(r'Parser key "([^"]+)":', message)
    expected = re.findall(r"Expected a <class '([\w.]+)'>", message)
    given = re.search(r"(?:Given|Got) value: (.*)", message)
    if not (key and expected and given):
        return message
    types = " or ".join(dict.fromkeys("null" if name == "NoneType" else name for name in expected))
    return f"--{key.group(1)} expects {types}, got {given.group(1).strip()!r}"
