"""The speed options: each is a switch, and each leaves what the network learns unchanged.

channels_last, bf16-mixed and compile change the arithmetic (another memory layout, another
precision, fused kernels), so runs with and without them agree within noise; on_device feeds
the very same batches, so runs with and without it agree to the bit. on_device and
channels_last are on by default.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from resnet_lit import FashionMNISTDataModule, ResNetClassifier
from resnet_lit.batches import DeviceBatches
from resnet_lit.cli import ResNetCLI

# 10 epochs of 10 steps (500 images, batch 50, cosine decay): ResNet-8 ends at 1.0 val/acc on the
# stand-in with seeds 0, 1 and 2 alike, and so do bf16-mixed and channels_last (seed 0).
EPOCHS = 10
# Runs that learned the same ends up within 5 of the 100 validation images of each other.
NOISE = 0.05


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine's 2 cores are shared with other jobs; there two intra-op threads wait on
    # each other and run these small nets several times slower than one thread does.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(root, fashion_root, *extra: str) -> ResNetCLI:
    """A short fit of ResNet-8 on the stand-in data, with the product's defaults plus `extra`."""
    args = [
        "fit",
        "--seed_everything=0",
        "--model.arch=resnet8",
        "--model.schedule=cosine",
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
        f"--data.data_dir={fashion_root}",
        "--data.download=false",
        "--data.val_size=100",
        "--data.batch_size=50",
        *extra,
    ]
    return ResNetCLI(args=args)


def val_acc(cli: ResNetCLI) -> float:
    return cli.trainer.callback_metrics["val/acc"].item()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, fashion_root) -> ResNetCLI:
    cli = fit(tmp_path_factory.mktemp("default"), fashion_root)
    assert val_acc(cli) > 0.95  # it learned (chance: 0.1), so agreeing with it means something
    return cli


def datamodule(fashion_root, **kwargs) -> FashionMNISTDataModule:
    data = FashionMNISTDataModule(data_dir=str(fashion_root), download=False, val_size=100, batch_size=50, **kwargs)
    data.setup("fit")
    data.setup("test")
    return data


# --- on_device ---------------------------------------------------------------------------------


def test_on_device_batches_are_the_dataloaders_batches(fashion_root):
    on, off = datamodule(fashion_root, seed=0), datamodule(fashion_root, seed=0, on_device=False)
    assert isinstance(on.train_dataloader(), DeviceBatches)
    assert isinstance(off.train_dataloader(), DataLoader)
    orders = []
    for epoch in (0, 1):
        loaders = on.train_dataloader(), off.train_dataloader()
        for loader in loaders:
            loader.sampler.set_epoch(epoch)  # as Lightning does at the start of every epoch
        batches_on, batches_off = list(loaders[0]), list(loaders[1])
        assert len(loaders[0]) == len(loaders[1]) == len(batches_on) == len(batches_off) == 10  # drop_last
        for (images, targets, key), (images_dl, targets_dl, key_dl) in zip(batches_on, batches_off, strict=True):
            assert torch.equal(images, images_dl) and torch.equal(targets, targets_dl) and key == key_dl
        orders.append(torch.cat([targets for _, targets, _ in batches_on]))
    assert not torch.equal(*orders)  # a new shuffle every epoch
    for stage in ("val", "test"):
        batches_on = list(getattr(on, f"{stage}_dataloader")())
        batches_off = list(getattr(off, f"{stage}_dataloader")())
        assert len(batches_on) == len(batches_off)
        for (images, targets), (images_dl, targets_dl) in zip(batches_on, batches_off, strict=True):
            assert torch.equal(images, images_dl) and torch.equal(targets, targets_dl)


def test_a_dataloader_where_on_device_does_not_apply(fashion_root):
    # Worker processes were asked for; predict needs the batch indices only a DataLoader records.
    assert isinstance(datamodule(fashion_root, num_workers=1).train_dataloader(), DataLoader)
    data = datamodule(fashion_root)
    data.setup("predict")
    assert isinstance(data.predict_dataloader(), DataLoader)


@pytest.mark.slow  # two short fits
def test_on_device_trains_exactly_as_the_dataloader(default_run, tmp_path, fashion_root):
    assert default_run.datamodule.hparams.on_device  # the default
    off = fit(tmp_path, fashion_root, "--data.on_device=false")
    assert isinstance(off.trainer.train_dataloader, DataLoader)
    assert isinstance(default_run.trainer.train_dataloader, DeviceBatches)
    weights, weights_off = default_run.model.state_dict(), off.model.state_dict()
    assert all(torch.equal(weights[key], weights_off[key]) for key in weights)
    assert val_acc(off) == val_acc(default_run)


# --- pinned memory and non-blocking transfer ---------------------------------------------------


# Without an accelerator torch leaves the batch unpinned, and says so; here that is expected.
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator:UserWarning")
def test_pinned_batches_are_copied_non_blocking(fashion_root, monkeypatch):
    data = datamodule(fashion_root, pin_memory=True, on_device=False)
    loader = data.train_dataloader()
    assert loader.pin_memory  # the DataLoader pins each batch (where there is an accelerator)
    batch = next(iter(loader))  # a real training batch: images, targets and their augmentation key
    # Lightning moves a batch with `Tensor.to(device, non_blocking=True)` (CPU excepted), which
    # overlaps the copy of a pinned batch with the GPU's work. Record what our batch asks for,
    # without a GPU: the two pinned tensors, and nothing for the key (plain ints, no tensor made
    # on the host every step).
    model = ResNetClassifier(arch="resnet8")
    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: calls.append(kwargs) or self)
        moved = model.transfer_batch_to_device(batch, torch.device("cuda", 0), 0)
    assert calls == [{"non_blocking": True}] * 2
    assert moved[2] == batch[2] and all(isinstance(k, int) for k in moved[2])
    # The data module's hook hands the step what it takes: the augmented images and the targets.
    images, targets = data.on_after_batch_transfer(moved, 0)
    assert images.dtype == torch.float32 and torch.equal(targets, batch[1])


# --- channels_last -----------------------------------------------------------------------------


def channels_last(model: ResNetClassifier) -> bool:
    # A conv with more than one input channel: with one, both layouts are the same strides.
    return model.net.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_changes_the_layout_not_the_function():
    torch.manual_seed(0)
    model = ResNetClassifier(arch="resnet8").eval()  # channels_last by default
    reference = ResNetClassifier(arch="resnet8", channels_last=False).eval()
    reference.load_state_dict(model.state_dict())
    assert channels_last(model) and not channels_last(reference)
    model.to(torch.float64)  # a move keeps the layout
    model.to(torch.float32)
    assert channels_last(model)
    images = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(images), reference(images), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # a short fit
def test_channels_last_learns_as_nchw(default_run, tmp_path, fashion_root):
    assert channels_last(default_run.model)  # the default
    cli = fit(tmp_path, fashion_root, "--model.channels_last=false")
    assert not channels_last(cli.model)
    assert val_acc(cli) == pytest.approx(val_acc(default_run), abs=NOISE)


# --- mixed precision ---------------------------------------------------------------------------


@pytest.mark.slow  # a short fit
def test_bf16_mixed_learns_as_the_default(default_run, tmp_path, fashion_root):
    cli = fit(tmp_path, fashion_root, "--trainer.precision=bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.model.net.conv1.weight.dtype == torch.float32  # mixed: bf16 compute, fp32 weights
    assert val_acc(cli) == pytest.approx(val_acc(default_run), abs=NOISE)


# --- torch.compile -----------------------------------------------------------------------------


@pytest.mark.slow  # compiles the net (a C++ build on CPU) and trains it
def test_compile_learns_as_the_default_and_its_checkpoint_loads_without_compile(default_run, tmp_path, fashion_root):
    cli = fit(tmp_path, fashion_root, "--model.compile=true")
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not [key for key in state if "_orig_mod" in key]
    assert set(state) == set(ResNetClassifier(arch="resnet8").state_dict())
    assert cli.model.net._compiled_call_impl is not None
    assert val_acc(cli) == pytest.approx(val_acc(default_run), abs=NOISE)

    plain = ResNetCLI(
        args=[
            "validate",
            f"--ckpt_path={ckpt}",
            "--model.compile=false",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert plain.model.net._compiled_call_impl is None
    assert val_acc(plain) == pytest.approx(val_acc(cli), abs=0.02)  # eager vs compiled arithmetic: a sample at most


def test_compile_mode_reaches_torch_compile_and_graphs_only_on_a_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    model = ResNetClassifier(arch="resnet8", compile=True, compile_mode="reduce-overhead")
    model.configure_model()
    assert calls == [{"dynamic": False, "mode": "reduce-overhead"}]
    assert not model._graphs  # CUDA graphs need a GPU: on the CPU it compiles as "default" would


# --- the optimizer -------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_optimizer_is_fused_so_a_step_can_be_skipped_on_the_device(optimizer):
    torch.manual_seed(0)
    model = ResNetClassifier(arch="resnet8", optimizer=optimizer)
    opt = model.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"]  # what StopOnNonFiniteLoss looks for before it hands over `found_inf`
    images, targets = torch.rand(4, 1, 28, 28), torch.arange(4)

    def step(bad: float) -> list[bool]:
        """One update with the guard's verdict handed over; for each weight, whether it stayed as it was."""
        opt.zero_grad()
        F.cross_entropy(model(images), targets).backward()
        opt.found_inf = torch.tensor(bad)  # as StopOnNonFiniteLoss sets it: 1 where the loss was not finite
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        return [torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)]

    assert all(step(1.0))  # skipped on the device: no weight moved
    assert not any(step(0.0))  # a finite loss: every weight is updated
