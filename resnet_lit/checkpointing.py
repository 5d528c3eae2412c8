"""Checkpoint files: written atomically, read as plain data only, checked before a run relies on them.

Lightning's own `TorchCheckpointIO` writes through an fsspec transaction whose temporary file
lives in the system's temp folder, so the final move can be a copy that a crash leaves half
done; and it unpickles with whatever `weights_only` it is handed. `SafeCheckpointIO` writes
next to the target and renames (atomic on POSIX), and always loads weights-only, so a crafted
checkpoint is refused before any of its code can run.
"""

import errno
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.pytorch import Trainer

from resnet_lit.errors import BadInput

PathLike = str | os.PathLike  # a file's path, as Lightning hands it over


class CheckpointError(BadInput):
    """A checkpoint that cannot be used: damaged, or holding more than plain data."""


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, unpickled weights-only: tensors, numbers, strings and containers.

    Raises:
        BadInput: there is no such file.
        CheckpointError: the file is damaged (truncated, corrupt, not a checkpoint) or asks to
            import anything beyond plain data, which would let it run code.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint {str(path)!r} does not exist")
    checkpoint, problem = _try_load(path, map_location)
    if problem is not None:
        raise CheckpointError(_damaged_message(path, problem))
    return checkpoint


def is_intact(path: PathLike) -> bool:
    path = Path(path)
    try:
        return path.is_file() and _try_load(path, "cpu")[1] is None
    except CheckpointError:  # refused as unsafe
        return False


def newest_intact(folder: PathLike, exclude: PathLike | None = None) -> Path | None:
    """The most recently written checkpoint in `folder` that loads, or None."""
    candidates = [p for p in Path(folder).glob("*.ckpt") if exclude is None or p != Path(exclude)]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if is_intact(candidate):
            return candidate
    return None


def atomic_save(checkpoint: dict[str, Any], path: PathLike) -> None:
    """`torch.save` to a temporary file beside `path`, flushed to disk, then renamed over it.

    A crash at any moment leaves either the previous file or the new one under `path`, never
    a part of one (a hidden `.NAME.PID.tmp` may remain after a hard kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            try:
                torch.save(checkpoint, f)
            except RuntimeError as err:  # torch's writer reports a failed write (a full disk) this way
                raise OSError(
                    errno.EIO, f"the write failed ({_first_sentence(err)}); is the disk full?", str(path)
                ) from err
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)  # makes the rename itself survive a power cut


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer, with atomic local saves and weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        if _is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # object stores: Lightning's own way
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: PathLike, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict:
        if weights_only is False:
            raise CheckpointError("weights_only=False would let a checkpoint run code when loaded; it is not supported")
        if _is_remote(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(path, map_location=map_location or "cpu")


def use_safe_checkpoint_io(trainer: Trainer) -> None:
    """Give the trainer's strategy `SafeCheckpointIO` unless it was configured with a reader of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()


def read_weights_only(path: PathLike, map_location: Any = "cpu") -> Any:
    """Any file `torch.save` wrote (a checkpoint, a bare state dict), unpickled as plain data only.

    Raises:
        CheckpointError: the file is damaged, or unpickling it would import anything beyond plain data.
    """
    path = Path(path)
    loaded, problem = _try_load(path, map_location, lightning=False)
    if problem is not None:
        raise CheckpointError(f"{str(path)!r} cannot be read: {problem}")
    return loaded


def _try_load(path: Path, map_location: Any, lightning: bool = True) -> tuple[Any, str | None]:
    """(the checkpoint, None), or (None, what is damaged); a checkpoint that would run code is refused.

    `lightning`: it must be a Lightning checkpoint (a dict with a state_dict). Otherwise a file in
    torch's legacy (pre-1.6, not zip) format is read too, without the zip's checks.
    """
    problem = _damage(path) if lightning or zipfile.is_zipfile(path) or path.stat().st_size == 0 else None
    if problem:
        return None, problem
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"unsupported GLOBAL (\S+)", str(err), re.IGNORECASE)
        if unsafe:
            raise CheckpointError(
                f"refused checkpoint {str(path)!r}: unpickling it would call {unsafe.group(1)}, so it could run "
                "code; resnet_lit reads checkpoints as plain data (weights only) and did not load it"
            ) from err
        return None, "its contents cannot be unpickled"
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        return None, _first_sentence(err)
    except Exception as err:  # torch's legacy reader on a file torch.save did not write (a text file: KeyError)
        return None, f"torch.load cannot read it ({type(err).__name__} {_first_sentence(err)}): not from torch.save"
    if lightning and (not isinstance(checkpoint, dict) or "state_dict" not in checkpoint):
        return None, "it holds no state_dict, so it is not a Lightning checkpoint"
    return checkpoint, None


def _damage(path: Path) -> str | None:
    """What is wrong with the file as a zip archive (torch.save's format), or None."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty"
    if not zipfile.is_zipfile(path):
        return (
            f"{size} bytes that are not a zip archive as torch.save writes: truncated, overwritten, or not a checkpoint"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as err:
        return f"its zip archive is broken: {err}"
    if bad is not None:
        return f"its member {bad!r} fails the CRC check: the bytes changed after saving"
    return None


def _damaged_message(path: Path, problem: str) -> str:
    intact = newest_intact(path.parent, exclude=path)
    if intact is None:
        advice = "there is no intact checkpoint beside it; start a new run without --ckpt_path"
    else:
        advice = f"the newest intact checkpoint beside it is {str(intact)!r}: pass --ckpt_path {str(intact)!r}"
    return f"checkpoint {str(path)!r} is damaged ({problem}); {advice}"


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0].rstrip(".")


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on this platform or file system; the rename is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _is_remote(path: PathLike) -> bool:
    return "://" in str(path)
