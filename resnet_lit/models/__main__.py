"""Print a net's parameter count and each stage's input and output shape (the check of the paper's Table 1).

The same walk as the model summary at the start of `fit` (its "In sizes" and "Out sizes"), for
any net and input size, without training.

python -m resnet_lit.models resnet50 --in-channels 3 --num-classes 1000 --size 224
"""

import argparse
import sys

from resnet_lit.models import build, names, stage_shapes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_lit.models", description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"one of: {names()}")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=28, help="input height and width")
    parser.add_argument("--stem", choices=["imagenet", "small"], default=None)
    parser.add_argument("--shortcut", choices=["A", "B", "C"], default=None)
    args = parser.parse_args(argv)
    try:
        model = build(
            args.name,
            in_channels=args.in_channels,
            num_classes=args.num_classes,
            stem=args.stem,
            shortcut=args.shortcut,
        )
        shapes = stage_shapes(model, (args.in_channels, args.size, args.size))
    except (ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    print(f"{args.name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"  {'stage':<8} {'input':<20} output")
    previous = (1, args.in_channels, args.size, args.size)
    for stage, shape in shapes.items():
        # Each stage takes the previous one's output, except the classifier, which takes it flattened.
        given = (previous[0], previous[1]) if stage == "fc" else previous
        print(f"  {stage:<8} {tuple(given)!s:<20} {tuple(shape)}")
        previous = tuple(shape)


if __name__ == "__main__":
    main()
