"""LightningModules: ImageClassifier, SemanticSegmenter."""

from .segmenter import SemanticSegmenter

__all__ = ["SemanticSegmenter"]
