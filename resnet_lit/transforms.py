"""Batched image transforms that run on the training device, one random draw per sample.

torchvision.transforms.v2 applied to a batch tensor draws one set of random parameters for the
whole batch; these functions draw them per sample, from a generator seeded with the batch's key,
so an epoch's augmentation is a function of (seed, epoch, batch, rank) alone and a resumed run
repeats it. `augment` is a training batch's whole recipe and `preprocess` every stage's; the data
modules' `on_after_batch_transfer` calls them.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad by `padding` pixels and crop back to the input size at a random offset per image.

    The CIFAR augmentation of He et al. 2016, Sec. 4.2 ("4 pixels are padded on each side, and
    a 32x32 crop is randomly sampled"), as torchvision's `RandomCrop(size, padding)` per image.

    Args:
        images: (B, C, H, W), any dtype; padding is in pixel space, so pad before normalizing.
        padding: pixels of zeros on each side.
        generator: on the images' device.
    """
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=generator, device=images.device)
    # Every possible crop as a view, then one pick per image: a copy of B x C x H x W pixels,
    # without per-pixel index tensors.
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W)
    batch = torch.arange(b, device=images.device)
    return windows[batch, :, offsets[0, :, 0], offsets[1, :, 0]]  # (B, C, H, W)


def random_hflip(images: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability `p`."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_erasing(
    images: Tensor,
    p: float,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
) -> Tensor:
    """Random Erasing (Zhong et al. 2020): with probability `p`, fill a random rectangle of each image with `value`.

    As torchvision's `RandomErasing` with its defaults, per image, in one pass over the batch: the
    rectangle's area is a uniform fraction `scale` of the image's, its aspect ratio log-uniform
    in `ratio`, its place uniform. Deviation: a rectangle larger than the image is clamped to it
    rather than drawn again (torchvision tries 10 times, then erases nothing).

    Args:
        images: (B, C, H, W) floats, after normalization: `value` 0 is then the data set's mean.
        p: the probability that an image is erased.
        generator: on the images' device.
    """
    b, _, h, w = images.shape
    device = images.device
    draws = torch.rand(b, 5, generator=generator, device=device)
    erase = draws[:, 0] < p
    area = h * w * (scale[0] + (scale[1] - scale[0]) * draws[:, 1])
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draws[:, 2]
    aspect = log_ratio.exp()
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (draws[:, 3] * (h - eh + 1)).floor()
    left = (draws[:, 4] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
    inside = inside & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1))
    mask = inside & erase.view(b, 1, 1)  # (B, H, W)
    return images.masked_fill(mask.unsqueeze(1), value)


def normalization(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[Tensor, Tensor]:
    """`normalize`'s per-channel scale and shift, (1, C, 1, 1) float tensors on `device`.

    Made once per device and kept by the caller: built per batch, they would be a host-to-device
    copy every step.
    """
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = 1 / (255 * std_t), -mean_t / std_t
    return scale.float().to(device), shift.float().to(device)


def normalize(images: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """uint8 pixels to per-channel (x / 255 - mean) / std, as one multiply-add (`normalization` gives scale, shift)."""
    return torch.addcmul(shift, images, scale)  # promotes the uint8 pixels to float in the same kernel


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of a float batch to size x size (the original report trained at 224)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def seeded_generator(device: torch.device, *keys: int) -> torch.Generator:
    """A generator on `device` whose state depends only on the integer `keys`."""
    seed = 0
    for key in keys:
        seed = (seed * 1_000_003 + int(key)) % (2**63 - 1)  # a polynomial hash: order matters
    return torch.Generator(device=device).manual_seed(seed)


def preprocess(images: Tensor, normalization: tuple[Tensor, Tensor] | None, size: int | None) -> Tensor:
    """A uint8 batch to the model's input (every stage): normalized, or only scaled to [0, 1], then resized.

    Args:
        images: (B, C, H, W) uint8.
        normalization: `normalization`'s (scale, shift) on the images' device; None: scale to [0, 1] only.
        size: `resize` to size x size; None: the native size.
    """
    images = normalize(images, *normalization) if normalization is not None else images.float().div_(255)
    return resize(images, size) if size else images


def augment(
    images: Tensor,
    key: tuple[int, ...],
    crop_padding: int,
    hflip: bool,
    erasing: float,
    normalization: tuple[Tensor, Tensor] | None,
    size: int | None,
) -> Tensor:
    """A uint8 training batch to the model's input, augmented: crop, flip, `preprocess`, erase.

    Every random draw comes from one generator seeded with `key` (seed, epoch, batch, rank), the
    key the training loader hands out with the batch: a resumed run draws exactly what an
    uninterrupted one does. Crop and flip work on pixels; erasing fills with 0 after normalization,
    which is the data set's mean.
    """
    generator = seeded_generator(images.device, *key)
    images = random_crop(images, crop_padding, generator)
    if hflip:
        images = random_hflip(images, generator)
    images = preprocess(images, normalization, size)
    if erasing:
        images = random_erasing(images, erasing, generator)
    return images
