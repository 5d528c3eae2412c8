"""The files a data module reads from disk: a folder of images for `predict`, and the data set's own files.

- `read_images` decodes a `predict` folder under one policy: only the grey levels or RGB values
  the model was trained on, converted from an image's mode where that is exact, refused
  (`ImageModeError`, `BadInput`) where it is not, and the size checked against the model's.
- `decompress_beside` and `remove_new_empty_folders` keep the data set's folder as the user left
  it: a file is written beside its target and renamed, and a failed download leaves no folder.
"""

import contextlib
import gzip
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from resnet_lit.errors import BadInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class MissingDataError(BadInput):
    """The data set's files are not on disk and could not be downloaded."""


class ImageModeError(BadInput):
    """An image whose pixels cannot be read as the grey levels or RGB values the model was trained on."""


# --- a folder of images for predict ------------------------------------------------------------


def read_images(folder: Path, channels: int, side: int) -> tuple[Tensor, list[str]]:
    """The images of `folder` (sorted by name) as one (N, C, H, W) uint8 tensor, and their paths.

    Args:
        folder: holds the images; files of other suffixes than `IMAGE_SUFFIXES` are left out.
        channels: 1 (grey levels) or 3 (RGB), as the model was trained on.
        side: the model's native height and width; an image of another size is refused.
    """
    if not folder.is_dir():
        raise MissingDataError(f"data.predict_dir {str(folder)!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MissingDataError(f"data.predict_dir {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return torch.stack([_read_image(path, channels, side) for path in files]), [str(p) for p in files]


def _read_image(path: Path, channels: int, side: int) -> Tensor:
    """One image file as (C, H, W) uint8, refused unless it is `channels` x `side` x `side`."""
    try:
        with Image.open(path) as pil:
            image = torch.from_numpy(_pixels(pil, channels, path))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        if isinstance(err, ImageModeError):
            raise
        raise BadInput(f"cannot read image {str(path)!r}: {err}") from err
    image = image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)  # (C, H, W)
    if tuple(image.shape) != (channels, side, side):
        c, h, w = image.shape
        raise BadInput(
            f"image {str(path)!r} is {w}x{h} with {c} channel(s); this model expects "
            f"{side}x{side} with {channels} channel(s)"
        )
    return image


def _pixels(image: Image.Image, channels: int, path: Path) -> np.ndarray:
    """An image's pixels as uint8 grey levels (H, W) or RGB values (H, W, 3), converted from its mode.

    A palette image ("P") becomes the colours its indices stand for (not the indices); a 1-bit
    image 0 and 255. Refused: several frames, 16-bit, 32-bit and float pixels (their scale is
    unknown), transparent pixels (their colour is undefined). A colour image for a grey model,
    or the other way round, comes back with its channels, for the caller's shape check to refuse
    (a palette image whose colours are all grey counts as grey).
    """
    name = f"image {str(path)!r}"
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageModeError(f"{name} is animated ({frames} frames): save the frame to classify as an image of its own")
    if image.mode.startswith(("I", "F")):
        raise ImageModeError(
            f"{name} holds {image.mode} pixels (16-bit, 32-bit or float), whose scale to 0..255 is unknown: "
            "save it as an 8-bit image"
        )
    palette = image.mode in ("P", "PA")
    if palette:
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in ("LA", "RGBA", "La", "RGBa"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            raise ImageModeError(
                f"{name} has transparent pixels, whose grey level or colour is undefined: flatten it onto a "
                "background first"
            )
        image = image.convert("L" if image.mode in ("LA", "La") else "RGB")
    if image.mode == "1":
        image = image.convert("L")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    pixels = np.array(image, dtype=np.uint8, copy=True)
    if palette and channels == 1 and pixels.ndim == 3 and (pixels == pixels[..., :1]).all():
        pixels = pixels[..., 0]  # a palette of greys: the grey levels it stands for
    return pixels


# --- the data set's files ----------------------------------------------------------------------


def decompress_beside(path: Path) -> None:
    """Write `path` from `path.gz` where only the compressed file is there (atomically: a temporary file, renamed)."""
    packed = path.with_name(path.name + ".gz")
    if path.exists() or not packed.is_file():
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        with gzip.open(packed, "rb") as source, partial.open("wb") as target:
            shutil.copyfileobj(source, target)
        partial.replace(path)
    except (OSError, EOFError) as err:  # a read-only folder, or a damaged .gz
        partial.unlink(missing_ok=True)
        raise MissingDataError(
            f"could not decompress {str(packed)!r} into {str(path)!r} ({err}): decompress it there yourself, or "
            "copy the four files to a folder you can write to and point --data.data_dir at it"
        ) from err


def folders(root: Path) -> set[Path]:
    """`root`, its ancestors, and every folder below it, as they exist now."""
    below = {p for p in root.rglob("*") if p.is_dir()} if root.is_dir() else set()
    return below | {p for p in (root, *root.parents) if p.is_dir()}


def remove_new_empty_folders(root: Path, before: set[Path]) -> None:
    """Remove the folders under (and up to) `root` that were made since `before` (`folders`) and hold nothing."""
    for folder in sorted(folders(root) - before, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: keep it
            folder.rmdir()
