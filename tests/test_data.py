"""FashionMNISTDataModule and the batched device-side transforms, on stand-in data in torchvision's layout."""

import gzip
import re

import pytest
import torch
import torchvision
from PIL import Image

from resnet_lit.data import CIFAR10DataModule, FashionMNISTDataModule, MissingDataError
from resnet_lit.transforms import augment, random_crop, random_hflip, seeded_generator


def make(fashion_root, **kwargs) -> FashionMNISTDataModule:
    kwargs = {"data_dir": str(fashion_root), "download": False, "val_size": 100, "batch_size": 50, **kwargs}
    return FashionMNISTDataModule(**kwargs)


def test_split_is_seeded_disjoint_and_in_memory_uint8(fashion_root):
    dm = make(fashion_root)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (500, 100)
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    assert dm.train_set.dataset.images.dtype == torch.uint8
    assert dm.train_set.dataset.images.shape == (600, 1, 28, 28)
    again = make(fashion_root)
    again.setup("fit")
    assert again.val_set.indices == dm.val_set.indices
    other = make(fashion_root, split_seed=1)
    other.setup("fit")
    assert other.val_set.indices != dm.val_set.indices
    dm.setup("test")
    assert len(dm.test_set) == 200


def test_batches_are_uint8_tensors_and_normalized_on_transfer(fashion_root):
    dm = make(fashion_root)
    dm.setup("fit")
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (50, 1, 28, 28) and images.dtype == torch.uint8
    assert targets.shape == (50,) and targets.dtype == torch.int64
    # Without a training loop (validation, test, predict) only preprocessing applies.
    x, y = dm.on_after_batch_transfer((images, targets), 0)
    torch.testing.assert_close(x, (images.float() / 255 - 0.2860) / 0.3530)  # float32 rounding: one multiply-add
    assert torch.equal(y, targets)


def test_training_batches_use_the_full_training_set_in_a_seeded_order(fashion_root):
    dm = make(fashion_root, seed=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    first = torch.cat([y for _, y, _ in loader])
    loader.sampler.set_epoch(0)
    assert torch.equal(first, torch.cat([y for _, y, _ in loader]))
    loader.sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y, _ in loader]))
    assert len(first) == 500  # 10 full batches (drop_last keeps batches full)


@pytest.mark.parametrize("on_device", [True, False], ids=["on device", "DataLoader"])
def test_each_training_batch_comes_with_its_key_and_is_augmented_with_it(fashion_root, on_device):
    dm = make(fashion_root, seed=3, erasing=0.5, on_device=on_device)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    batches = list(loader)
    assert [key for *_, key in batches] == [(3, 2, index, 0) for index in range(10)]  # (seed, epoch, batch, rank)
    # Resumed after 4 batches of epoch 2: the rest of the epoch, each batch with the key it had.
    loader.load_state_dict({"epoch": 2, "batches": 4})
    resumed = list(loader)
    assert [key for *_, key in resumed] == [key for *_, key in batches[4:]]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, batches[4:], strict=True))
    # The hook augments a keyed batch with its own key, and hands the step (images, targets).
    images, targets, key = batches[5]
    x, y = dm.on_after_batch_transfer(batches[5], 0)
    normalization = dm._normalization_on(images.device)
    assert torch.equal(x, augment(images, key, 4, True, 0.5, normalization, None)) and torch.equal(y, targets)
    assert not torch.equal(x, dm.preprocess(images))
    assert not torch.equal(x, augment(images, (3, 2, 6, 0), 4, True, 0.5, normalization, None))


def test_random_crop_draws_a_different_offset_per_image():
    image = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28) + 1
    batch = image.repeat(64, 1, 1, 1)
    out = random_crop(batch, 4, seeded_generator(torch.device("cpu"), 0))
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))[0, 0]
    offsets = set()
    for crop in out[:, 0]:
        # Each crop is exactly one 28x28 window of the zero-padded image.
        matches = [
            (dy, dx) for dy in range(9) for dx in range(9) if torch.equal(crop, padded[dy : dy + 28, dx : dx + 28])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 20  # per-sample draws, not one for the whole batch


def test_random_hflip_flips_some_images_of_a_batch():
    batch = torch.rand(1, 1, 28, 28).repeat(64, 1, 1, 1)
    out = random_hflip(batch, seeded_generator(torch.device("cpu"), 0))
    flipped = [torch.equal(o, batch[0].flip(-1)) for o in out]
    kept = [torch.equal(o, batch[0]) for o in out]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_augmentation_draws_depend_only_on_their_keys():
    batch = torch.rand(16, 1, 28, 28)
    torch.manual_seed(0)
    a = random_crop(batch, 4, seeded_generator(torch.device("cpu"), 0, 1, 2))
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(a, random_crop(batch, 4, seeded_generator(torch.device("cpu"), 0, 1, 2)))
    assert not torch.equal(a, random_crop(batch, 4, seeded_generator(torch.device("cpu"), 0, 2, 1)))


def test_resize_and_unnormalized_preprocessing(fashion_root):
    dm = make(fashion_root, resize=56, normalize=False)
    assert dm.image_size == 56
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    x = dm.preprocess(images)
    assert x.shape == (4, 1, 56, 56)
    assert x.min() >= 0 and x.max() <= 1


MISSING = {
    "Fashion-MNIST": (
        FashionMNISTDataModule,
        torchvision.datasets.FashionMNIST,
        "FashionMNIST/raw",
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ),
    "CIFAR-10": (
        CIFAR10DataModule,
        torchvision.datasets.CIFAR10,
        "cifar-10-batches-py",
        ("cifar-10-python.tar.gz", "data_batch_1", "data_batch_5", "test_batch", "batches.meta"),
    ),
}


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("module, dataset, folder, files", MISSING.values(), ids=MISSING)
def test_missing_files_give_one_clear_error(tmp_path, monkeypatch, download, module, dataset, folder, files):
    def offline(self):
        raise RuntimeError("Error downloading the files: no internet")

    monkeypatch.setattr(dataset, "download", offline)
    dm = module(data_dir=str(tmp_path / "nowhere"), download=download)
    with pytest.raises(MissingDataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / folder) in message
    for name in files:
        assert name in message
    assert "--data.data_dir" in message
    assert ("could not be downloaded" in message) == download
    assert "\n" not in message
    assert not (tmp_path / "nowhere").exists()  # nothing left behind


def test_the_gz_files_alone_are_read_without_a_download(tmp_path, fashion_root):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (fashion_root / "FashionMNIST" / "raw").iterdir():
        (raw / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), download=False, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    reference = FashionMNISTDataModule(data_dir=str(fashion_root), download=False, val_size=100)
    reference.setup("fit")
    assert torch.equal(dm.train_set.dataset.images, reference.train_set.dataset.images)
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == sorted(
        p.name for p in (fashion_root / "FashionMNIST" / "raw").iterdir()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size must be positive"),
        ({"val_size": 0}, "data.val_size must be positive"),
        ({"val_size": 600}, "smaller than the 600 training images"),
        ({"mean": [0.5, 0.5]}, "data.mean needs 1 value"),
    ],
)
def test_bad_settings_are_refused(fashion_root, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make(fashion_root, **kwargs).setup("fit")


def test_predict_on_a_folder_of_images_checks_their_size(fashion_root, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(torch.randint(0, 256, (28, 28), dtype=torch.uint8).numpy()).save(folder / f"img{i}.png")
    dm = make(fashion_root, predict_dir=str(folder))
    dm.setup("predict")
    assert len(dm.predict_set) == 3
    assert dm.predict_names == [str(folder / f"img{i}.png") for i in range(3)]
    Image.new("RGB", (32, 32)).save(folder / "rgb.png")
    with pytest.raises(ValueError, match=r"is 32x32 with 3 channel.*expects 28x28 with 1 channel"):
        make(fashion_root, predict_dir=str(folder)).setup("predict")
