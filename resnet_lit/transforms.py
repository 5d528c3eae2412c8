"""Batched image transforms that run on the training device, one random draw per sample.

torchvision.transforms.v2 applied to a batch tensor draws one set of random parameters for the
whole batch; these functions draw them per sample, from a generator the caller seeds, so an
epoch's augmentation is a function of (seed, epoch, batch) alone and a resumed run repeats it.
"""

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


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 pixels to floats in [0, 1], then per-channel (x - mean) / std."""
    x = images.float().div_(255)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


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
