"""Exceptions of the pruning layer that callers catch by type."""

from __future__ import annotations


class ZeroScoresError(RuntimeError):
    """A round's scores are all zero, so every weight would be pruned; ``method`` names the scorer.

    Example:
        >>> raise ZeroScoresError("px scores are all zero", method="px")
    """

    def __init__(self, message: str, method: str) -> None:
        super().__init__(message)
        self.method = method

    def __reduce__(self):
        # Pickled with both arguments (the default pickles ``args``, the message alone).
        return type(self), (str(self), self.method)
