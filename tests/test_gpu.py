"""The GPU path: on-device batches, bf16, CUDA graphs, checkpoints, and no host sync between logging steps.

Skipped where there is no CUDA GPU (CI has none): run them on a GPU machine with
`python -m pytest tests/test_gpu.py` (about a minute on an H100-class GPU, most of it compiling).
"""

import pytest
import torch
from lightning.pytorch import Callback

from resnet_lit.batches import DeviceBatches
from resnet_lit.cli import ResNetCLI

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LOG_EVERY = 5
STEPS_PER_EPOCH = 10  # the stand-in's 500 training images in batches of 50
GRAPHS = ["--model.compile=true", "--model.compile_mode=reduce-overhead"]
# CUDAGraphTreeManager's methods for: a warm-up or eager run, a new recording, a replay.
GRAPH_EVENTS = {"run_eager": "eager", "record_function": "recorded", "execute_node": "replayed"}


class SyncsAreErrors(Callback):
    """Makes every host synchronisation an error in the steps that neither log nor start or end an epoch.

    `torch.cuda.set_sync_debug_mode("error")` raises at any call that waits for the GPU
    (`.item()`, a copy to pageable host memory, `nonzero`, a stream synchronisation).
    `from_epoch`: leave the first epochs out (compilation and the recording of CUDA graphs
    synchronise, once).
    """

    def __init__(self, from_epoch: int = 0) -> None:
        self.from_epoch = from_epoch
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step + 1  # the step about to be taken, 1-based
        quiet = step % LOG_EVERY and step % STEPS_PER_EPOCH not in (0, 1) and trainer.current_epoch >= self.from_epoch
        torch.cuda.set_sync_debug_mode("error" if quiet else "default")
        self.checked += bool(quiet)

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")


class GraphEvents(Callback):
    """Counts, per epoch, what cudagraph trees did with each compiled call: warm up or fall back to
    eager (`run_eager`), record a new graph (`record_function`), or replay one (`execute_node`).

    Wraps the three methods of torch's CUDAGraphTreeManager (private: torch has no public counter
    of recordings; the names are those of torch 2.1 to 2.14) for the time of the test.
    """

    def __init__(self, monkeypatch) -> None:
        from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

        self.epoch = 0
        self.counts: dict[int, dict[str, int]] = {}
        for method, kind in GRAPH_EVENTS.items():
            original = getattr(CUDAGraphTreeManager, method)
            monkeypatch.setattr(CUDAGraphTreeManager, method, self._counted(original, kind))

    def _counted(self, original, kind: str):
        def counted(manager, *args, **kwargs):
            counts = self.counts.setdefault(self.epoch, dict.fromkeys(GRAPH_EVENTS.values(), 0))
            counts[kind] += 1
            return original(manager, *args, **kwargs)

        return counted

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch = trainer.current_epoch  # its validation counts with it


def fit(root, data_args, *extra: str, epochs: int = 2, callback: Callback | None = None) -> ResNetCLI:
    """What `python -m resnet_lit fit` does, with `callback` run first in every hook."""
    args = [
        "--model.arch=resnet8",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.log_every_n_steps={LOG_EVERY}",
        "--trainer.accelerator=gpu",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={root}",
        *data_args,
        *extra,
    ]
    cli = ResNetCLI(args=args, run=False)
    if callback is not None:
        cli.trainer.callbacks.insert(0, callback)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_batches_are_cut_on_the_gpu_and_the_net_learns_in_bf16(tmp_path, data_args):
    cli = fit(tmp_path, data_args, "--trainer.precision=bf16-mixed", epochs=6)
    assert isinstance(cli.trainer.train_dataloader, DeviceBatches)
    assert cli.trainer.train_dataloader.images.device.type == "cuda"
    assert cli.model.device.type == "cuda"
    assert cli.trainer.callback_metrics["val/acc"].item() > 0.5  # chance: 0.1


@pytest.mark.parametrize("extra", [[], ["--trainer.precision=bf16-mixed", *GRAPHS]], ids=["default", "bf16+graphs"])
def test_no_host_sync_between_logging_steps(tmp_path, data_args, extra):
    graphs = bool(extra)
    watch = SyncsAreErrors(from_epoch=1 if graphs else 0)
    cli = fit(tmp_path, data_args, *extra, epochs=3 if graphs else 2, callback=watch)  # raises at a sync
    assert cli.trainer.global_step == (3 if graphs else 2) * STEPS_PER_EPOCH
    assert watch.checked > 0


def test_cuda_graphs_replay_update_batchnorm_follow_the_schedule_and_load_without_compile(
    tmp_path, data_args, monkeypatch
):
    from torch._dynamo.utils import counters

    counters.clear()
    events = GraphEvents(monkeypatch)
    cli = fit(tmp_path, data_args, *GRAPHS, "--model.schedule=cosine", epochs=3, callback=events)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])  # graphs were used
    # Training and evaluation each warmed up and recorded in the first epochs; the last epoch only
    # replays: no new recording (every step marks its start: ResNetClassifier._mark_step), no eager run.
    assert sum(c["recorded"] for c in events.counts.values()) > 0, events.counts
    assert events.counts[2]["recorded"] == 0 and events.counts[2]["eager"] == 0, events.counts
    assert events.counts[2]["replayed"] >= 2 * STEPS_PER_EPOCH, events.counts  # forward and backward each step
    net = cli.model.net
    assert torch.isfinite(net.bn1.running_mean).all() and net.bn1.running_mean.abs().sum() > 0
    assert net.bn1.num_batches_tracked.item() == 3 * STEPS_PER_EPOCH  # every step updated BatchNorm
    last_lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert last_lr < 0.01  # cosine decay to near 0 over the run: the schedule was applied
    ckpt = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    gpu = ["--trainer.accelerator=gpu", "--trainer.devices=1", f"--trainer.default_root_dir={tmp_path}"]
    eager = ResNetCLI(args=["validate", f"--ckpt_path={ckpt}", "--model.compile=false", *gpu])
    graphed = cli.trainer.callback_metrics["val/acc"].item()
    assert eager.trainer.callback_metrics["val/acc"].item() == pytest.approx(graphed, abs=0.02)


def test_gradient_accumulation_trains_compiled_and_is_refused_with_cuda_graphs(tmp_path, data_args, capsys):
    # With CUDA graphs each micro-batch would overwrite the .grad the next accumulates into
    # (pytorch issue 169545): refused in one line. Compiled without graphs, it trains.
    from resnet_lit.cli import main

    accumulate = ["--trainer.accumulate_grad_batches=2", "--trainer.accelerator=gpu", "--trainer.devices=1"]
    accumulate += [f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--model.arch=resnet8", *GRAPHS, *accumulate, *data_args])
    assert refused.value.code == 2
    assert "cannot run with CUDA graphs" in capsys.readouterr().err
    cli = fit(tmp_path, data_args, "--model.compile=true", "--trainer.accumulate_grad_batches=2", epochs=2)
    assert cli.trainer.global_step == STEPS_PER_EPOCH  # 2 epochs of 10 batches, one step per 2
    assert torch.isfinite(cli.model.net.fc.weight).all()
