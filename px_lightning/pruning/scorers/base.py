"""The scorer interface: a policy that maps (model, current masks, data) to one score per weight."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


class Scorer:
    """Base class of scoring methods.

    ``score`` receives the plain model, the prunable tensor names, the current masks (same names, bool)
    and the scoring batches, and returns ``{name: Tensor}`` of non-negative-or-signed scores, higher is
    kept. It must leave ``model`` as it found it. ``one_shot`` scorers default to a single round.
    """

    name: str = "scorer"
    one_shot: bool = True
    needs_data: bool = True

    def score(
        self,
        model: nn.Module,
        weights: dict[str, Tensor],
        masks: dict[str, Tensor],
        batches: Iterable,
        loss_fn: nn.Module | None = None,
    ) -> dict[str, Tensor]:
        raise NotImplementedError
