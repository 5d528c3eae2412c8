"""What a checkpoint may decide when a run starts from it, and what a resumed run may change.

A checkpoint is data from elsewhere. It may rebuild this project's network and data
preprocessing (so `test --ckpt_path X` needs no config), but it never chooses code or paths: its
data class must be one of this project's, its data folder is used only where it exists, and it
never starts a download. A resumed `fit` continues the run the checkpoint holds: more epochs,
yes; another network, other training hyperparameters or other data, never (the optimizer's and
the schedule's state come from the checkpoint, so the config would describe a run that did not
happen). Speed settings (channels_last, compile, precision, devices) may change.
"""

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from resnet_lit.checkpointing import CheckpointError, load_checkpoint
from resnet_lit.errors import BadInput
from resnet_lit.models import NETWORK_KEYS
from resnet_lit.runs import LOGS, newest_run, version_number

# The model's arguments the data module decides (resnet_lit.cli links them): never a checkpoint's default.
LINKED = ("in_channels", "num_classes", "image_size")

# Hyperparameters of how the run trains: a resumed run keeps its checkpoint's.
TRAINING_KEYS = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "interval",
    "milestones",
    "gamma",
    "step_size",
    "warmup_lr",
    "warmup_until_error",
    "warmup_steps",
    "label_smoothing",
    "ema_decay",
)
# The data a run trains on, batch by batch: a resumed run keeps its checkpoint's.
DATA_KEYS = ("batch_size", "val_size", "split_seed", "seed", "crop_padding", "hflip", "erasing", "normalize")
DATA_KEYS += ("mean", "std", "resize")
# Never taken from a checkpoint: where data lives and whether to download it are the user's to say.
USER_ONLY = ("download", "predict_dir")
# Schedules whose shape depends on the length of the run: resuming may not change that length.
LENGTH_SCHEDULES = ("cosine", "onecycle")
# The data modules a checkpoint may name (LightningCLI writes their class path into it).
DATA_CLASSES = ("FashionMNISTDataModule", "CIFAR10DataModule")


class ResumeError(BadInput):
    """A checkpoint that cannot be used as asked, or a resumed run that would change what it trains."""


class CheckpointMismatchError(BadInput):
    """The checkpoint holds a different network than the one the config asks for."""


@dataclass
class CheckpointSettings:
    """A checkpoint's model hyperparameters, data class and data hyperparameters, checked.

    `data_dir_missing` holds the data folder the checkpoint names where it does not exist here.
    """

    path: str
    model: dict[str, Any]
    data_class: str | None
    data: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    data_dir_missing: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def read_settings(path: str) -> CheckpointSettings:
    """Read and check what a checkpoint says about its network, its data and its run (weights-only)."""
    checkpoint = load_checkpoint(path)
    model = checkpoint.get("hyper_parameters")
    known = _init_arguments()
    if not isinstance(model, dict) or "arch" not in model:
        raise ResumeError(
            f"{path} is not a checkpoint of resnet_lit's ResNetClassifier (it names no network: no 'arch' among "
            "its hyperparameters); give a checkpoint that python -m resnet_lit fit wrote"
        )
    foreign = sorted(key for key in model if not key.startswith("_") and key not in known)
    if foreign:
        raise ResumeError(
            f"{path} is not a checkpoint of resnet_lit's ResNetClassifier: its hyperparameters "
            f"{', '.join(foreign)} are not ResNetClassifier's; give a checkpoint that python -m resnet_lit fit wrote"
        )
    _check_lightning_version(checkpoint.get("pytorch-lightning_version"), path)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    data_class = _allowed_data_class(data.get("_class_path"), path)
    data = {key: value for key, value in _public(data).items() if key not in USER_ONLY}
    missing = None
    if "data_dir" in data and not Path(str(data["data_dir"])).is_dir():
        missing = str(data.pop("data_dir"))
    if data_class is not None and data.get("seed") is None:
        # The seed the run resolved (from the global one) is in the data module's own state.
        state = checkpoint.get(data_class.rsplit(".", 1)[-1]) or {}
        if isinstance(state.get("seed"), int):
            data["seed"] = state["seed"]
    shapes = {key: tuple(value.shape) for key, value in checkpoint["state_dict"].items() if hasattr(value, "shape")}
    return CheckpointSettings(
        path=str(path),
        model=_public(model),
        data_class=data_class,
        data=data,
        run=dict(checkpoint.get("resnet_lit_run") or {}),
        data_dir_missing=missing,
        shapes=shapes,
    )


@dataclass
class ResolvedCheckpoint:
    """A checkpoint file to start from; for `fit --ckpt_path last`, the run folder to go on logging in."""

    path: str
    version: int | None = None
    named_as: str | None = None  # "last" or "best", where the path was looked up

    def read(self) -> CheckpointSettings:
        """`read_settings`; a refusal names `--ckpt_path last` (or best) where that is what the user gave."""
        try:
            return read_settings(self.path)
        except BadInput as err:
            if self.named_as is None:
                raise
            raise type(err)(f"--ckpt_path {self.named_as}: {err}") from err


def resolve_checkpoint(subcommand: str, config: Any) -> ResolvedCheckpoint | None:
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
        run = newest_run(root)
        try:
            # best: read from last.ckpt, which is refused where damaged or unsafe (last: when it is read, later)
            found = None if run is None else run.last if ckpt_path == "last" else run.best()
        except BadInput as err:
            raise type(err)(f"--ckpt_path {ckpt_path}: {err}") from err
        if found is None and run is not None:  # best: the newest run has a last.ckpt but records no best
            raise BadInput(
                f"--ckpt_path best: the newest run, {run.folder}, records no best checkpoint (it stopped before "
                "its first validation, or validation was off); give a checkpoint file, such as one of an older "
                "run's, or --ckpt_path last"
            )
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
            return ResolvedCheckpoint(str(found), version_number(run.folder), ckpt_path)
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


def check_data_dir(config: Any, settings: CheckpointSettings) -> None:
    """Refuse the checkpoint's data folder where it does not exist here and the user named no other."""
    data_dir = config.data.init_args.get("data_dir") if "init_args" in config.data else None
    if settings.data_dir_missing is not None and data_dir == settings.data_dir_missing:
        raise ResumeError(
            f"{settings.path} was trained on data in {settings.data_dir_missing!r}, which does not exist here: "
            "give the folder that holds the data with --data.data_dir"
        )


def check_network(settings: CheckpointSettings, differences: list[str], config_given: bool) -> None:
    """Refuse a checkpoint whose network differs from the one asked for (`network_differences`)."""
    if not differences:
        return
    if config_given:
        asked, drop = "the config asks for", "drop --config (the checkpoint rebuilds its own model and data)"
    else:
        asked, drop = "the options ask for", "drop those options"
    raise CheckpointMismatchError(
        f"{settings.path} holds a different network than {asked}: {', '.join(differences)}; "
        f"{drop}, or give the matching checkpoint"
    )


def check_resume(config: Any, settings: CheckpointSettings) -> None:
    """Refuse a `fit` that would change more of the run its checkpoint holds than resuming allows."""
    changes = resume_differences(config, settings)
    if changes:
        raise ResumeError(
            f"--ckpt_path {settings.path}: a resumed run continues with its own network, training "
            f"settings and data, and these differ: {', '.join(changes)}; drop them to resume (more epochs "
            "and speed settings may change), or start a new run without --ckpt_path"
        )


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


def _check_lightning_version(version: Any, path: str) -> None:
    """Refuse what Lightning's own checkpoint migration would fail on, before anything is written.

    Lightning reads `pytorch-lightning_version` to upgrade an older checkpoint's layout; missing or
    malformed, it fails with a traceback, and resnet_lit's checkpoints come from Lightning 2.
    """
    hint = "give a checkpoint that python -m resnet_lit fit wrote"
    if not isinstance(version, str):
        raise ResumeError(f"{path} records no Lightning version (pytorch-lightning_version); {hint}")
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise ResumeError(f"{path} records Lightning version {version!r}, which is not a version; {hint}") from None
    if parsed < Version("2.0"):
        raise ResumeError(
            f"{path} was written by Lightning {version}; resnet_lit's checkpoints come from Lightning 2 on; {hint}"
        )


def network_differences(
    model_hparams: Any, checkpoint: dict[str, Any], keys: tuple[str, ...] = NETWORK_KEYS
) -> list[str]:
    """`key=value (checkpoint: value)` for each network-deciding hyperparameter that differs."""
    return _differences("", model_hparams, checkpoint, keys)


def resume_differences(config: Any, settings: CheckpointSettings) -> list[str]:
    """What a `fit` config would change about the run the checkpoint holds, beyond what resuming allows.

    The network is checked on its own (`network_differences`), once the model is built.
    """
    changes = _differences("model.", config.model, settings.model, TRAINING_KEYS)
    data_args = config.data.get("init_args", config.data) if hasattr(config.data, "get") else config.data
    changes += _differences("data.", data_args, settings.data, DATA_KEYS)
    data_class = config.data.get("class_path") if hasattr(config.data, "get") else None
    if settings.data_class and data_class and data_class.split(".")[-1] != settings.data_class.split(".")[-1]:
        changes.append(f"data={data_class!r} (checkpoint: {settings.data_class!r})")
    schedule = settings.model.get("schedule")
    if schedule in LENGTH_SCHEDULES and settings.run:
        for key in ("max_epochs", "max_steps"):
            new, old = config.trainer.get(key), settings.run.get(key)
            if key in settings.run and _normal(new, key) != _normal(old, key):
                changes.append(f"trainer.{key}={new!r} (checkpoint: {old!r}; the {schedule} schedule spans the run)")
    return changes


def _differences(prefix: str, values: Any, checkpoint: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    out = []
    for key in keys:
        if key in checkpoint and key in values and _normal(values[key]) != _normal(checkpoint[key]):
            out.append(f"{prefix}{key}={values[key]!r} (checkpoint: {checkpoint[key]!r})")
    return out


def _normal(value: Any, key: str | None = None) -> Any:
    """Values as comparable: tuples as lists, ints as floats; no limit (None) as Lightning's -1."""
    if value is None and key in ("max_epochs", "max_steps"):
        return -1
    if isinstance(value, tuple | list):
        return [_normal(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _allowed_data_class(class_path: Any, path: str) -> str | None:
    if class_path is None:
        return None
    name = str(class_path).rsplit(".", 1)[-1]
    if str(class_path) in (f"resnet_lit.{name}", f"resnet_lit.data.{name}") and name in DATA_CLASSES:
        return f"resnet_lit.data.{name}"
    raise ResumeError(
        f"{path} names the data class {class_path!r}, which is not one of resnet_lit's ({', '.join(DATA_CLASSES)}): "
        "a checkpoint does not choose code to import; if you trust it, name the class yourself with "
        f"--data {class_path}"
    )


def _public(hparams: dict[str, Any]) -> dict[str, Any]:
    """Init arguments only, without LightningCLI's `_class_path` / `_instantiator` bookkeeping."""
    return {key: value for key, value in hparams.items() if not str(key).startswith("_")}


def _init_arguments() -> set[str]:
    from resnet_lit.module import ResNetClassifier

    return set(inspect.signature(ResNetClassifier.__init__).parameters) - {"self"}


__all__ = [
    "LINKED",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointSettings",
    "ResolvedCheckpoint",
    "ResumeError",
    "check_data_dir",
    "check_network",
    "check_resume",
    "check_weights_fit",
    "checkpoint_defaults",
    "network_differences",
    "read_settings",
    "resolve_checkpoint",
    "resume_differences",
]
