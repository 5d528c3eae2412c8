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
    "CheckpointError",
    "CheckpointSettings",
    "ResumeError",
    "network_differences",
    "read_settings",
    "resume_differences",
]
