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


def test_cuda_graphs_replay_update_batchnorm_follow_the_schedule_and_load_without_compile(tmp_path, data_args):
    from torch._dynamo.utils import counters

    counters.clear()
    cli = fit(tmp_path, data_args, *GRAPHS, "--model.schedule=cosine", epochs=3)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])  # graphs were used
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
