"""LightningModules: ImageClassifier, SemanticSegmenter."""

from .classifier import ImageClassifier
from .segmenter import SemanticSegmenter

__all__ = ["ImageClassifier", "SemanticSegmenter"]
