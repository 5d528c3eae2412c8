"""The command line: LightningCLI wiring only (links, defaults, checkpoints); numbers live in configs/.

python -m resnet_lit fit --config configs/r50.yaml
python -m resnet_lit test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
"""

import os
import sys
from argparse import ArgumentError
from typing import Any

from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from resnet_lit import compat, notices, refusals, slurm
from resnet_lit.callbacks import (
    BestCheckpoint,
    EpochLines,
    ExactResume,
    LastCheckpoint,
    LoggedValuesProgressBar,
    PredictionWriter,
    SaveOnInterrupt,
    StopOnNonFiniteLoss,
)
from resnet_lit.checkpointing import use_safe_checkpoint_io
from resnet_lit.data import FashionMNISTDataModule, InMemoryImageDataModule
from resnet_lit.insight import Insight
from resnet_lit.models import NETWORK_KEYS
from resnet_lit.module import ResNetClassifier
from resnet_lit.resume import (
    LINKED,
    CheckpointSettings,
    check_data_dir,
    check_network,
    check_resume,
    check_weights_fit,
    checkpoint_defaults,
    network_differences,
    resolve_checkpoint,
)
from resnet_lit.runs import LOGS, ExclusiveTensorBoardLogger
from resnet_lit.settings import check_run_settings, check_seed, name_the_seed


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

        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        # last.ckpt after every epoch, beside the best checkpoint and at the same moments; no options of its own.
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        for key in ("dirpath", "save_on_train_epoch_end", "save_last"):
            parser.link_arguments(f"checkpoint.{key}", f"last_checkpoint.{key}")
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
        check_seed(self.config[subcommand])  # here: LightningCLI seeds before instantiating
        resolved = resolve_checkpoint(subcommand, self.config[subcommand])
        if resolved is None:
            return
        self._checkpoint = resolved.read()
        compat.set_subcommand_defaults(self, subcommand, checkpoint_defaults(subcommand, self._checkpoint))
        self._parse(parser, args)
        self.config[subcommand].ckpt_path = resolved.path
        self._resume_version = resolved.version  # fit --ckpt_path last: go on logging in that run's folder
        check_data_dir(self.config[subcommand], self._checkpoint)

    def _parse(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            err.known_options = refusals.options_of(self._parsers)  # for "did you mean" (resnet_lit.refusals)
            raise

    def _parse_ckpt_path(self) -> None:
        """Replaced by `parse_arguments`, which lets explicit arguments win over the checkpoint.

        A private method of LightningCLI (2.6), overridden to turn it off: it would set the
        checkpoint's settings over the explicit ones (https://github.com/Lightning-AI/pytorch-lightning/issues/20801,
        open). See resnet_lit.compat for the other private uses.
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
            differences = network_differences(config.model, self._checkpoint.model, unlinked)
            check_network(self._checkpoint, differences, config_given=bool(config.get("config")))
            check_resume(config, self._checkpoint)

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
        trainer = super().instantiate_trainer(**kwargs)  # its settings' ValueErrors: resnet_lit.refusals
        unwanted = (
            (BestCheckpoint, not checkpointing),
            (LastCheckpoint, not checkpointing),
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
        given = bool(self.config[self.subcommand].get("config"))
        check_network(settings, network_differences(self.model.hparams, settings.model), config_given=given)
        check_weights_fit(settings, self.model)

    def before_fit(self) -> None:
        warning = notices.gpu_recipe_on_cpu(self.trainer, self.model)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)


def main(args: ArgsType = None) -> None:
    """Entry point of `python -m resnet_lit`; bad input ends in one line, not a traceback.

    Exit status: 2 refused input, 1 training diverged, 143 stopped by SIGTERM and 130 by
    Ctrl-C (after saving last.ckpt): resnet_lit.refusals.
    """
    notices.quiet()  # the warnings filters
    with refusals.exit_statuses():
        cli = ResNetCLI(args=args)
        if cli.subcommand == "fit":
            print(notices.fit_summary(cli.trainer))
