"""IDX files (LeCun's MNIST format), checked before torchvision parses them.

torchvision reads the header and reshapes whatever bytes follow, so a truncated or foreign file
ends in a reshape or dtype error deep inside it. These checks name the file and the fault.
"""

import math
import struct
from pathlib import Path

from resnet_lit.errors import BadInput

UNSIGNED_BYTE = 0x08  # the only element type the MNIST-style data sets use


class DamagedDataError(BadInput):
    """A data file on disk is truncated, corrupt, or disagrees with its partner."""


def check_pair(images: Path, labels: Path, image_size: int, num_classes: int) -> None:
    """Check an images file and its labels file: well-formed, complete, matching counts, labels in range.

    Args:
        images: IDX file of (N, image_size, image_size) unsigned bytes.
        labels: IDX file of (N,) unsigned bytes, each below `num_classes`.
    """
    n_images, *shape = _dims(images, ndim=3)
    (n_labels,) = _dims(labels, ndim=1)
    if shape != [image_size, image_size]:
        h, w = shape
        raise DamagedDataError(
            f"{str(images)!r} holds {w}x{h} images, not {image_size}x{image_size}: it is not this data set's file"
        )
    if n_images != n_labels:
        raise DamagedDataError(
            f"{str(images)!r} holds {n_images} images but {str(labels)!r} holds {n_labels} labels: "
            "the two files come from different copies; copy or download both again"
        )
    top = max(labels.read_bytes()[8:], default=0)
    if top >= num_classes:
        raise DamagedDataError(
            f"{str(labels)!r} holds label {top}, but there are {num_classes} classes (0..{num_classes - 1}): "
            "the file is corrupt; copy or download it again"
        )


def _dims(path: Path, ndim: int) -> list[int]:
    """The dimensions an IDX file's header declares, after checking that its size matches them."""
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4 + 4 * ndim)
    fix = "delete it and run again with --data.download true, or copy it again"
    if len(header) < 4 + 4 * ndim or header[:2] != b"\0\0" or header[2] != UNSIGNED_BYTE or header[3] != ndim:
        raise DamagedDataError(
            f"{str(path)!r} is not an IDX file of {ndim}-dimensional unsigned bytes "
            f"(its first bytes are {header[:4].hex() or 'missing'}, expected 000008{ndim:02x}): {fix}"
        )
    dims = list(struct.unpack(f">{ndim}I", header[4:]))
    expected = len(header) + math.prod(dims)
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise DamagedDataError(
            f"{str(path)!r} is {what}: {size} bytes, but its header declares {' x '.join(map(str, dims))} "
            f"values ({expected} bytes): {fix}"
        )
    return dims
