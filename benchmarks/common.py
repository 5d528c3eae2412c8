"""What every benchmark shares: the machine it ran on, interleaved repeats, a plain table."""

import argparse
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

DEFAULT_DATA_DIR = "data"  # as the CLI's --data.data_dir; give --data-dir for data elsewhere


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, the same for both sides (0: torch's default). Default 1: on a "
        "CPU shared with other jobs, two threads wait on each other and every number gets noisier",
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the tables show their median")
    return parser


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def quiet_lightning() -> None:
    """Keep Lightning's start-up notes (GPU available, tips) out of the tables."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)


def check_fashion_mnist(data_dir: str) -> None:
    raw = Path(data_dir) / "FashionMNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file() and not (raw / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(
            f"error: no Fashion-MNIST in {str(raw)!r}; point --data-dir at the folder holding FashionMNIST/raw/"
        )


def machine() -> str:
    """One line: CPU model, cores, torch threads, load, versions."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
        f"load average {load}"
    )


def interleaved(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each measurement once per round, alternating who goes first, for `repeats` rounds.

    Whatever else the machine does then falls on both sides alike; each measurement returns a
    number (a time, a rate) and the caller takes the median.
    """
    results: dict[str, list[float]] = {name: [] for name in measures}
    names = list(measures)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            results[name].append(measures[name]())
    return results


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Ratios of the two sides round by round: each pair ran back to back, under the same load."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str) -> str:
    return f"{format(min(values), fmt)} .. {format(max(values), fmt)}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, so docs/performance.md can hold it as printed."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in (headers, ["-" * w for w in widths], *rows)
    ]
    return "\n".join(lines)
