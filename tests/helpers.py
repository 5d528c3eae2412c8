"""Reading back what runs wrote."""

import io
from pathlib import Path

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's TensorBoard event files, as (step, value) lists."""
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
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
