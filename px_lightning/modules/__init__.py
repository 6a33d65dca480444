"""LightningModules: ImageClassifier, SemanticSegmenter."""
