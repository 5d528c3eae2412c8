"""Running the CLI as users do, and reading back what runs wrote."""

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resnet_lit import report
from resnet_lit.checkpointing import load_checkpoint
from resnet_lit.cli import main

# The run settings every test shares where it needs no others: no progress bar (a line per epoch
# instead, readable in pytest's output) and the logged values at every step, so a test can look at
# any step of a run of 10 (the stand-in data: 500 training images in batches of 50).
FAST = ["--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1"]


def data_flags(root: Path, val_size: int = 100) -> list[str]:
    return [f"--data.data_dir={root}", "--data.download=false", f"--data.val_size={val_size}", "--data.batch_size=50"]


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below `folders` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in sorted(Path(f).rglob("*"))}


def refused(capsys, args: list[str], status: int = 2) -> str:
    """Run `main(args)`, expect it to refuse with `status`, and return its one stderr line."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "<class" not in lines[0] and "Namespace(" not in lines[0]  # no parser internals
    return lines[0]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: max abs diff {(a[key].double() - b[key].double()).abs().max()}"


def logged_steps(events_file: Path, tag: str = "train/loss") -> list[int]:
    return [step for step, _ in report.read_event_file(events_file).get(tag, [])]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's TensorBoard event files, as (step, value) lists, file after file (not merged)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for events in report.event_files(Path(run_dir)):
        for tag, points in report.read_event_file(events).items():
            out.setdefault(tag, []).extend(points)
    return out


def images(run_dir: Path) -> dict[str, list[tuple[int, Image.Image]]]:
    """Every image tag of a run's TensorBoard event files, as (step, decoded PIL image) lists."""
    out: dict[str, list[tuple[int, Image.Image]]] = {}
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            out.setdefault(tag, []).extend(
                (e.step, Image.open(io.BytesIO(e.encoded_image_string))) for e in acc.Images(tag)
            )
    return out


def has_graph(run_dir: Path) -> bool:
    """Whether a run's TensorBoard event files hold a model graph."""
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if acc.Tags()["graph"]:
            return True
    return False


def hparams_plugin(run_dir: Path) -> bytes:
    """What a run wrote for TensorBoard's HPARAMS tab (the experiment and session start), b"" if nothing."""
    out = b""
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        try:
            contents = acc.PluginTagToContent("hparams")
        except KeyError:  # no HPARAMS data in this file
            continue
        for content in contents.values():
            out += content
    return out
