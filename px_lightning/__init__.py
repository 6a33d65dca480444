"""px-lightning: pruning at initialisation (PX and baselines) for PyTorch Lightning.

The algorithm layer ``px_lightning.pruning`` is pure PyTorch. The Lightning parts (callbacks, modules,
data) are imported lazily from the package root, so ``import px_lightning.pruning`` never imports Lightning.

Example:
    >>> from px_lightning import ForesightPruningCallback
    >>> trainer = L.Trainer(callbacks=[ForesightPruningCallback(method="px", density=0.018)])
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "ForesightPruningCallback": "px_lightning.callbacks",
    "ImageClassifier": "px_lightning.modules",
    "SemanticSegmenter": "px_lightning.modules",
    "create_model": "px_lightning.models",
}

__all__ = ["ForesightPruningCallback", "ImageClassifier", "SemanticSegmenter", "__version__", "create_model"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'px_lightning' has no attribute {name!r}")
