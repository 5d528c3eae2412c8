"""He et al. 2016, Fig. 7: the standard deviation of every 3x3 layer's response, from checkpoints.

    python -m resnet_lit.responses runs/r20/.../last.ckpt runs/plain20/.../last.ckpt \\
        --out responses.png --table responses.md [--data_dir ../shared/data]

"The responses are the outputs of each 3x3 layer, after BN and before other nonlinearity
(ReLU/addition)" (Sec. 4.2, Analysis of Layer Responses). A forward hook on the BatchNorm after
each 3x3 convolution records its output over the whole test set, prepared exactly as the
checkpoint's data module prepares it for `test` (the weight average where the run kept one);
nothing is trained. A layer's std is the standard deviation of its response over the test images
and positions, per channel, averaged over the layer's channels (the paper does not say how it
pools channels; per channel keeps BatchNorm's learned offsets out of the spread).

Checkpoints of the same network (seeds of one config) are drawn as one curve, their mean, with a
band from the smallest to the largest; the table gives mean ± std and n. The figure has the
paper's two panels: by layer index (in the order the layers run), and sorted by magnitude.
`--logdir` also writes the curves to TensorBoard (one run per network, the layer index as step).
"""

import argparse
import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from resnet_lit.errors import BadInput, say_refusal

INSTALL_PLOT = 'the figure needs matplotlib: pip install "resnet-lit[plot]" (or pip install matplotlib)'


@dataclass
class Responses:
    """One checkpoint's layer responses: the std of each 3x3 layer, in the order the layers run."""

    ckpt: str
    arch: str
    label: str  # "ResNet-20", "plain-56"
    layers: list[str]  # the BatchNorm modules' names
    std: list[float]
    test_acc: float


class _Recorder:
    """Per-channel running sums of a module's output (float64), for the std over images and positions."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: Tensor | None = None
        self.sum_sq: Tensor | None = None

    def __call__(self, _module: nn.Module, _inputs: object, out: Tensor) -> None:
        values = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)  # (channels, images * H * W)
        if self.sum is None:
            self.sum = torch.zeros(out.shape[1], dtype=torch.float64, device=out.device)
            self.sum_sq = torch.zeros_like(self.sum)
        self.count += values.shape[1]
        self.sum += values.sum(dim=1)
        self.sum_sq += values.square().sum(dim=1)

    def std(self) -> float:
        mean = self.sum / self.count
        variance = (self.sum_sq / self.count - mean.square()).clamp_min(0) * self.count / max(self.count - 1, 1)
        return float(variance.sqrt().mean())


def response_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The BatchNorm right after each 3x3 convolution, by name (registration order; the forward pass orders them)."""
    layers, last_conv = {}, None
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            last_conv = module
        elif isinstance(module, nn.BatchNorm2d) and last_conv is not None and last_conv.kernel_size == (3, 3):
            layers[name] = module
            last_conv = None
    return layers


def measure(ckpt: str, data_dir: str | None = None, batch_size: int | None = None) -> Responses:
    """Run the checkpoint's network over its test set and return each 3x3 layer's response std."""
    from lightning.pytorch import Trainer

    from resnet_lit.module import ResNetClassifier
    from resnet_lit.resume import read_settings

    settings = read_settings(ckpt)  # refuses foreign, partial and code-running checkpoints
    if settings.data_class is None:
        raise BadInput(f"{ckpt} names no data module, so its test set is unknown; give a checkpoint that fit wrote")
    data = dict(settings.data)
    if data_dir is not None:
        data["data_dir"] = data_dir
    elif "data_dir" not in data:
        raise BadInput(
            f"{ckpt}'s data folder {settings.data_dir_missing!r} is not here: give the folder with --data_dir"
        )
    data["download"] = False
    if batch_size is not None:
        data["batch_size"] = batch_size
    module_name, class_name = settings.data_class.rsplit(".", 1)
    datamodule = getattr(__import__(module_name, fromlist=[class_name]), class_name)(**data)

    hparams = {**settings.model, "compile": False, "tta": False}  # the test images as they are, not their mirrors
    if "init_weights" in hparams:
        hparams["init_weights"] = None  # the checkpoint's own weights are loaded below
    model = ResNetClassifier(**hparams)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    net = model.ema_net if model.ema_net is not None else model.net  # what test evaluates

    recorders: dict[str, _Recorder] = {}
    order: list[str] = []  # the layers in the order the forward pass reaches them

    def hook(name: str, recorder: _Recorder):
        def record(module: nn.Module, inputs: object, out: Tensor) -> None:
            if name not in order:
                order.append(name)
            recorder(module, inputs, out)

        return record

    handles = []
    for name, layer in response_layers(net).items():
        recorders[name] = _Recorder()
        handles.append(layer.register_forward_hook(hook(name, recorders[name])))
    trainer = Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        (results,) = trainer.test(model, datamodule=datamodule, verbose=False)
    finally:
        for handle in handles:
            handle.remove()
    arch = str(settings.model["arch"])
    depth = "".join(ch for ch in arch if ch.isdigit())
    label = f"plain-{depth}" if arch.startswith("plain") else f"ResNet-{depth}"
    return Responses(ckpt, arch, label, order, [recorders[name].std() for name in order], results["test/acc"])


# --- seeds, the table and the figure ---------------------------------------------------------------


def grouped(measured: list[Responses]) -> dict[str, list[Responses]]:
    """The checkpoints of one network together (seeds of one config), networks in the order given."""
    groups: dict[str, list[Responses]] = {}
    for responses in measured:
        groups.setdefault(responses.label, []).append(responses)
    return groups


def _mean_std(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown(measured: list[Responses]) -> str:
    groups = grouped(measured)
    lines = [
        "| network | n | 3x3 layers | mean std | median std | largest std | test error (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, members in groups.items():
        lines.append(
            f"| {label} | {len(members)} | {len(members[0].std)} "
            f"| {_mean_std([statistics.mean(m.std) for m in members])} "
            f"| {_mean_std([statistics.median(m.std) for m in members])} "
            f"| {_mean_std([max(m.std) for m in members])} "
            f"| {_mean_std([100 * (1 - m.test_acc) for m in members], 2)} |"
        )
    depth = max(len(members[0].std) for members in groups.values())
    lines += ["", "Std of each layer's response, by layer index (mean ± std over the n checkpoints):", ""]
    lines += ["| layer | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for i in range(depth):
        cells = [
            _mean_std([m.std[i] for m in members]) if i < len(members[0].std) else "" for members in groups.values()
        ]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- a layer's response: the output of its BatchNorm after a 3x3 convolution, before the addition and the ReLU "
        "(He et al. 2016, Sec. 4.2); its std over the test images and positions per channel, averaged over channels.",
        "- n: the checkpoints of that network (its seeds). Checkpoints: " + ", ".join(m.ckpt for m in measured) + ".",
    ]
    return "\n".join(lines) + "\n"


def _band(members: list[Responses], sort: bool) -> tuple[list[int], list[float], list[float], list[float]]:
    curves = [sorted(m.std, reverse=True) if sort else m.std for m in members]
    columns = list(zip(*curves, strict=True))
    x = list(range(1, len(columns) + 1))
    return x, [statistics.mean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def plot(measured: list[Responses], out: Path):
    """Fig. 7's two panels: std by layer index, and sorted by magnitude; ResNets solid, plain nets dashed."""
    from matplotlib.figure import Figure

    groups = grouped(measured)
    depths = sorted({int("".join(ch for ch in label if ch.isdigit()) or 0) for label in groups})
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    panels = fig.subplots(1, 2, sharey=True)
    for panel, sort, title in ((panels[0], False, "by layer index"), (panels[1], True, "sorted by magnitude")):
        for label, members in groups.items():
            depth = int("".join(ch for ch in label if ch.isdigit()) or 0)
            colour = palette[depths.index(depth) % len(palette)]
            style = "--" if label.startswith("plain") else "-"
            x, mean, low, high = _band(members, sort)
            name = f"{label} (n={len(members)})" if len(members) > 1 else label
            panel.plot(x, mean, color=colour, linestyle=style, linewidth=1.5, label=name)
            if len(members) > 1:
                panel.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
        panel.set_title(title)
        panel.set_xlabel("layer index" + (" (sorted)" if sort else ""))
        panel.grid(alpha=0.3)
    panels[0].set_ylabel("std of the 3x3 layers' responses")
    panels[0].legend(loc="upper right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return fig


def write_tensorboard(measured: list[Responses], logdir: Path) -> None:
    """One TensorBoard run per network: `responses/std` and `responses/std_sorted`, the layer index as step."""
    from torch.utils.tensorboard import SummaryWriter

    for label, members in grouped(measured).items():
        with SummaryWriter(str(logdir / label)) as writer:
            for tag, sort in (("responses/std", False), ("responses/std_sorted", True)):
                x, mean, _, _ = _band(members, sort)
                for step, value in zip(x, mean, strict=True):
                    writer.add_scalar(tag, value, step)


def load(path: Path) -> list[Responses]:
    """What `--save` wrote: the measured responses, without the checkpoints."""
    try:
        return [Responses(**entry) for entry in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError) as err:
        raise BadInput(f"--load {str(path)!r} is not a file that --save wrote ({err})") from err


# --- the command ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from resnet_lit.notices import quiet

    quiet()  # the same quiet as python -m resnet_lit: no "no GPU" or advertising lines per checkpoint
    parser = argparse.ArgumentParser(prog="python -m resnet_lit.responses", description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="*", metavar="CKPT", help="checkpoints of python -m resnet_lit fit")
    parser.add_argument("--save", type=Path, help="also write what was measured to this JSON file (for --load)")
    parser.add_argument(
        "--load", type=Path, nargs="+", help="redraw from files --save wrote (one or more), instead of checkpoints"
    )
    parser.add_argument("--out", type=Path, help="the figure to write (PNG, PDF, SVG: by the suffix)")
    parser.add_argument("--table", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--logdir", type=Path, help="also write the curves here for TensorBoard")
    parser.add_argument("--data_dir", help="the data folder (default: the one each checkpoint was trained on)")
    parser.add_argument("--batch_size", type=int, help="test batch size (default: the checkpoint's)")
    args = parser.parse_args(argv)
    if bool(args.ckpts) == (args.load is not None):
        return say_refusal("give checkpoints, or --load with a file that --save wrote (not both)")
    if args.batch_size is not None and args.batch_size < 1:
        return say_refusal(f"--batch_size must be 1 or more, got {args.batch_size}")
    for ckpt in args.ckpts:
        if not Path(ckpt).is_file():
            return say_refusal(f"{ckpt!r}: no such file; give checkpoints (.ckpt) that python -m resnet_lit fit wrote")
    if args.out is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return say_refusal(INSTALL_PLOT)
    try:
        if args.load:
            measured = [entry for path in args.load for entry in load(path)]
        else:
            measured = [measure(c, args.data_dir, args.batch_size) for c in args.ckpts]
    except BadInput as err:
        return say_refusal(str(err))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps([dataclasses.asdict(m) for m in measured], indent=1) + "\n")
    table = markdown(measured)
    print(table, end="")
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    if args.out:
        plot(measured, args.out)
        print(f"figure: {args.out}")
    if args.logdir:
        write_tensorboard(measured, args.logdir)
        print(f"TensorBoard: tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
