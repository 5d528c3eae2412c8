"""He et al. 2016, Deep Residual Learning for Image Recognition, reproduced with PyTorch Lightning.

The Lightning classes load lazily, so `import resnet_lit.models` stays plain PyTorch.
"""

from importlib import import_module

_EXPORTS = {
    "ResNetClassifier": "resnet_lit.module",
    "FashionMNISTDataModule": "resnet_lit.data",
    "CIFAR10DataModule": "resnet_lit.data",
    "InMemoryImageDataModule": "resnet_lit.data",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'resnet_lit' has no attribute {name!r}")
