"""The pruning layer's own exception types, so callers catch a kind of failure rather than match a message.

Example:
    >>> try:
    ...     find_masks(model, "px", batches, density=0.01)
    ... except ZeroScoresError as err:
    ...     print(err.method, "gave all-zero scores")
"""

from __future__ import annotations


class UnknownOptionError(ValueError, TypeError):
    """An option the method does not take. A ``ValueError`` (a bad argument value of ``get_scorer``) and a
    ``TypeError`` (what Python raises for an unexpected keyword argument), so either ``except`` catches it."""


class ZeroScoresError(RuntimeError):
    """A scoring round gave every prunable weight the score zero, so thresholding would prune them all.

    ``method`` is the scorer's name.
    """

    def __init__(self, message: str, method: str) -> None:
        super().__init__(message)
        self.method = method

    def __reduce__(self):
        # Pickled with both arguments (the default pickles ``args``, the message alone): DDP workers and
        # multiprocessing send exceptions between processes.
        return type(self), (str(self), self.method)
