"""Networks, checkpoints and teachers; submodules import torch, this package itself imports nothing heavy."""
