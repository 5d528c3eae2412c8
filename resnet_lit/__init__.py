"""He et al. 2016, Deep Residual Learning for Image Recognition, reproduced with PyTorch Lightning."""
