"""Counting the reads from device memory to the host that a piece of code makes, without a GPU.

On a GPU each of these waits for every kernel queued before it (a host synchronisation). On the
CPU nothing waits, but the same calls are made: `HostReads` intercepts them with a
`TorchFunctionMode`, so a test on the CPU sees what would stall a GPU.
"""

import traceback
from collections.abc import Callable

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

# Tensor methods whose result is a Python value read from the tensor's memory.
READS = {
    "item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__",
    "__format__", "__array__", "__repr__", "is_nonzero", "equal", "allclose",
}  # fmt: skip
# Operations whose output shape depends on the values: the host must read them to allocate it.
DATA_DEPENDENT = {"nonzero", "unique", "unique_consecutive", "masked_select", "bincount", "repeat_interleave"}
# Tensors made from host (Python or NumPy) data: on a GPU, a host-to-device copy.
FROM_HOST = {"tensor", "as_tensor", "from_numpy", "asarray"}


def _to_host(func: Callable, args: tuple, kwargs: dict) -> bool:
    """`t.cpu()`, or `t.to("cpu")` / `t.to(torch.device("cpu"))`, of a tensor that is not on the CPU."""
    name = getattr(func, "__name__", "")
    if name not in ("cpu", "to") or not args or not isinstance(args[0], Tensor) or args[0].device.type == "cpu":
        return False  # on the CPU already: no copy
    if name == "cpu":
        return True
    targets = [*args[1:], kwargs.get("device")]
    return any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets)


def _bool_mask_index(func: Callable, args: tuple) -> bool:
    """`t[mask]` with a boolean tensor: the result's length is the mask's count."""
    if getattr(func, "__name__", "") not in ("__getitem__", "__setitem__") or len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in index)


class HostReads(TorchFunctionMode):
    """Records every device-to-host read and host-to-device tensor creation while active.

    `events` holds (kind, name, where) triples; `where` is the innermost frame outside torch.
    `label` is set by the caller (for example the training step it is in) and recorded with each.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[object, str, str, str]] = []
        self.label: object = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        kind = None
        if name in READS or _to_host(func, args, kwargs):
            kind = "read"
        elif name in DATA_DEPENDENT or _bool_mask_index(func, args):
            kind = "data-dependent"
        elif name in FROM_HOST and not (args and isinstance(args[0], Tensor)):
            kind = "from-host"
        if kind is not None:
            self.events.append((self.label, kind, name, _caller()))
        return func(*args, **kwargs)


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and "host_reads.py" not in frame.filename:
            return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} {frame.name}"
    return "?"
