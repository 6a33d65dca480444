"""px-lightning: pruning at initialisation (PX and baselines) for PyTorch Lightning."""

__version__ = "0.1.0"
