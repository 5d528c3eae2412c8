"""Weights from elsewhere into this project's networks: torchvision's, this project's, akamaster's.

`init_weights(net, source, ...)` loads a source into a freshly built network of the family and
says, one line each, what it adapted:

- a torchvision weights name (`ResNet18_Weights.IMAGENET1K_V1`): fetched through torchvision's own
  cache (`torch.hub.get_dir()/checkpoints`); offline, the cached file, or one line saying where to
  put it. Our resnet18 ... resnet152 use torchvision's parameter names, so the state dict loads as
  it is; the bottleneck nets need `stride_in_1x1=False` (torchvision's v1.5), or it is refused.
- a checkpoint of this project (`.ckpt`) or a state dict saved from one of its networks;
- a checkpoint of akamaster/pytorch_resnet_cifar10 (`{'state_dict', 'best_prec1'}`, `module.`
  prefixes, the classifier named `linear`): its option-A shortcut pads half of the new channels
  before the input channels and half after, ours all after. The two functions differ only in
  the order of each stage's channels, so the channels are permuted as they load: the network
  then computes exactly the reference layout's function.

Adapted where they must be: a 3-channel first conv into a 1-channel net (the RGB filters summed,
the usual choice), a classifier for another number of classes (left as initialised, a new
head), a first conv of another shape (another stem: left as initialised, and said). A state dict
whose layout is none of these is refused; nothing is ever loaded into a function it was not
trained for without saying so.
"""

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from resnet_lit.errors import BadInput

TORCHVISION_NAME = re.compile(r"(ResNet\d+)_Weights\.(\w+)")


def init_weights(net: nn.Module, source: str, arch: str, stride_in_1x1: bool = True) -> list[str]:
    """Load `source` into `net` (a network of this family named `arch`); returns what was done, a line each."""
    name = TORCHVISION_NAME.fullmatch(source)
    if name:
        state, origin = _torchvision_state(source, name.group(1), arch, stride_in_1x1), "torchvision"
    else:
        state, origin = _file_state(Path(source), arch)
    if origin == "akamaster":
        try:
            state = _akamaster_to_ours(state, net)
        except (KeyError, IndexError, RuntimeError) as err:  # a tensor missing, or of another shape
            raise BadInput(
                f"model.init_weights {source!r} looks like akamaster's layout (module.linear) but is not a whole "
                f"network of it ({type(err).__name__}: {err}): give a checkpoint their training script saved"
            ) from err
    return _load_adapting(net, state, f"{source} ({origin})")


# --- where the weights come from ----------------------------------------------------------------------


def _torchvision_state(source: str, family: str, arch: str, stride_in_1x1: bool) -> dict[str, Tensor]:
    from torchvision.models import get_weight

    if family.lower() != arch:
        raise BadInput(f"model.init_weights {source} holds a {family}; this network is {arch}: use {arch}'s weights")
    if arch in ("resnet50", "resnet101", "resnet152") and stride_in_1x1:
        raise BadInput(
            f"torchvision's {source} were trained with the stride in the bottlenecks' 3x3 conv (its v1.5): "
            "add --model.stride_in_1x1 false so they compute what they were trained for"
        )
    try:
        weights = get_weight(source)
    except (KeyError, ValueError) as err:  # an enum torchvision lacks, or a name its enum lacks
        raise BadInput(
            f"model.init_weights {source} is not a torchvision weights name ({_known_torchvision(family)})"
        ) from err
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as err:  # offline, and not in the cache
        raise BadInput(
            f"torchvision's {source} is not in its cache and could not be downloaded ({err}): put "
            f"{Path(weights.url).name} (from {weights.url}) at {cached}"
        ) from err


def _known_torchvision(family: str) -> str:
    from torchvision.models import get_model_weights

    try:
        names = [w.name for w in get_model_weights(family.lower())]
    except (KeyError, ValueError):
        return "torchvision's ResNets are ResNet18, 34, 50, 101 and 152"
    return f"{family}_Weights has {', '.join(names)}"


def _file_state(path: Path, arch: str) -> tuple[dict[str, Tensor], str]:
    """The tensors of a saved state dict or checkpoint, and whose layout they are in.

    A checkpoint of this project names its network: another one (plain8's weights into resnet8
    have the same shapes and another function) is refused. A run with a weight average was
    evaluated and selected with the average, so the average is what it gives.
    """
    if not path.is_file():
        raise BadInput(
            f"model.init_weights {str(path)!r} is neither a file nor a torchvision weights name "
            "(like ResNet18_Weights.IMAGENET1K_V1)"
        )
    from resnet_lit.checkpointing import CheckpointError, read_weights_only

    try:
        saved = read_weights_only(path)
    except CheckpointError as err:
        raise BadInput(f"model.init_weights: {err}") from err
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise BadInput(f"model.init_weights {str(path)!r} holds no state dict of tensors")
    keys = list(state)
    if all(k.startswith("module.") for k in keys) and any(k.startswith("module.linear.") for k in keys):
        return {k.removeprefix("module."): v for k, v in state.items()}, "akamaster"
    if any(k.startswith("net.") for k in keys):  # a checkpoint of this project: the network is `net`
        hparams = saved.get("hyper_parameters") if isinstance(saved.get("hyper_parameters"), dict) else {}
        source_arch = hparams.get("arch")
        if source_arch is not None and source_arch != arch:
            raise BadInput(
                f"model.init_weights {str(path)!r} holds a {source_arch}; this network is {arch}: pass "
                f"--model.arch {source_arch}, or give {arch}'s weights"
            )
        prefix = "ema_net." if any(k.startswith("ema_net.") for k in keys) else "net."
        origin = "resnet_lit, its weight average" if prefix == "ema_net." else "resnet_lit"
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}, origin
    if any(k.startswith("fc.") for k in keys) and any(k.startswith("layer1.") for k in keys):
        return state, "a state dict of this family"
    raise BadInput(
        f"model.init_weights {str(path)!r}: its layout is not recognised (keys like {keys[:3]}): expected a "
        "checkpoint of this project, a state dict of one of its networks, torchvision's or akamaster's"
    )


# --- akamaster's option-A layout --------------------------------------------------------------------


def _akamaster_to_ours(state: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """akamaster's state dict with `linear` renamed `fc` and each stage's channels in our order.

    Their option-A shortcut into a stage of P channels puts the previous stage's P/2 channels at
    positions P/4 .. 3P/4 (zeros on both sides); ours at 0 .. P/2 (zeros after). With `order[k]`
    mapping stage k's channel index in their layout to ours, the previous stage's channel j sits at
    their j + P/4 and at our order[k-1][j]; the zero channels fill the rest in order. Every tensor
    on a stage's residual stream is permuted: each block's conv2 and bn2 (outputs), each block's
    conv1 (inputs), and the classifier's inputs after the last stage.
    """
    state = {("fc." + k.removeprefix("linear.")) if k.startswith("linear.") else k: v for k, v in state.items()}
    stages = sorted({int(m.group(1)) for k in state if (m := re.match(r"layer(\d+)\.", k))})
    widths = [state[f"layer{s}.0.conv2.weight"].shape[0] for s in stages]
    orders: list[Tensor] = [torch.arange(state["conv1.weight"].shape[0])]  # the stem's output: as it is
    for width in widths:
        previous = orders[-1]
        order = torch.full((width,), -1, dtype=torch.long)
        if width == len(previous):  # no padding into this stage (the first)
            order = previous.clone()
        else:
            offset = (width - len(previous)) // 2
            order[offset : offset + len(previous)] = previous
            order[order < 0] = torch.arange(len(previous), width)  # their zero channels, in order
        orders.append(order)
    out = dict(state)
    for index, stage in enumerate(stages, start=1):
        into, within = orders[index - 1], orders[index]
        blocks = sorted({int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))})
        for block in blocks:
            prefix = f"layer{stage}.{block}."
            given = into if block == 0 else within
            out[prefix + "conv1.weight"] = _permute(state[prefix + "conv1.weight"], given, dim=1)
            out[prefix + "conv2.weight"] = _permute(state[prefix + "conv2.weight"], within, dim=0)
            for part in ("weight", "bias", "running_mean", "running_var"):
                out[prefix + f"bn2.{part}"] = _permute(state[prefix + f"bn2.{part}"], within, dim=0)
    out["fc.weight"] = _permute(state["fc.weight"], orders[-1], dim=1)
    return out


def _permute(tensor: Tensor, order: Tensor, dim: int) -> Tensor:
    """Put the entry at `i` (their layout) to `order[i]` (ours) along `dim`."""
    moved = torch.empty_like(tensor)
    index = [slice(None)] * tensor.dim()
    index[dim] = order
    moved[tuple(index)] = tensor
    return moved


# --- loading, adapting what must be adapted ---------------------------------------------------------


def _load_adapting(net: nn.Module, state: dict[str, Tensor], source: str) -> list[str]:
    ours = net.state_dict()
    extra = [k for k in state if k not in ours and not k.endswith("num_batches_tracked")]
    if extra:
        raise BadInput(
            f"model.init_weights {source} has {len(extra)} tensors this network lacks "
            f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}): not the same architecture"
        )
    done, take = [], {}
    for key, value in state.items():
        if key not in ours:
            continue
        target = ours[key]
        if value.shape == target.shape:
            take[key] = value
        elif (
            key == "conv1.weight"
            and value.shape[1] == 3
            and target.shape[1] == 1
            and value.shape[2:] == target.shape[2:]
        ):
            take[key] = value.sum(dim=1, keepdim=True)
            done.append("conv1: the 3 RGB filters of each kernel summed into 1 input channel")
        elif key.startswith("fc."):
            done.append(f"{key}: a new classifier for {target.shape[0]} classes (the source has {value.shape[0]})")
        elif key == "conv1.weight":
            done.append(
                f"conv1: the source's first conv is {tuple(value.shape)}, this stem's {tuple(target.shape)}: left as "
                "initialised (another stem)"
            )
        else:
            raise BadInput(
                f"model.init_weights {source}: {key} is {tuple(value.shape)} there and {tuple(target.shape)} here: "
                "not the same network; give weights of this architecture"
            )
    missing = [k for k in ours if k not in take and not k.endswith("num_batches_tracked")]
    unexplained = [k for k in missing if not (k.startswith("fc.") or k.startswith("conv1."))]
    if unexplained:
        raise BadInput(
            f"model.init_weights {source} lacks {len(unexplained)} of this network's tensors "
            f"({', '.join(unexplained[:3])}{', ...' if len(unexplained) > 3 else ''}): not the same architecture"
        )
    net.load_state_dict(take, strict=False)
    loaded = sum(1 for k in take if not k.endswith("num_batches_tracked"))
    return [f"init_weights: {loaded} tensors loaded from {source}", *(f"  {line}" for line in done)]
