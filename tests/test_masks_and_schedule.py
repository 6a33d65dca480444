import copy
import math
import warnings

import pytest
import torch
from helpers import CountingMagnitude, CountingPX, conformance_models
from torch import nn

from px_lightning.pruning import (
    MagnitudeScorer,
    apply_masks,
    compute_scores,
    density_schedule,
    find_masks,
    get_masks,
    prunable_parameters,
    remove_masks,
    schedule,
    sparsity_report,
    threshold_masks,
)
from px_lightning.pruning.schedule import _kth_smallest


def small_cnn():
    torch.manual_seed(0)
    return conformance_models.build("small_cnn")


def test_apply_and_remove_keep_pruned_weights_exactly_zero():
    model = small_cnn()
    masks = find_masks(model, "magnitude", density=0.3)
    param_ids = {id(p) for p in model.parameters()}
    apply_masks(model, masks)
    assert abs(sparsity_report(model)["density"] - 0.3) < 1e-3
    # gradient of a pruned weight is zero through the parametrization
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    grad = model.conv1.parametrizations.weight.original.grad
    assert torch.all(grad[~masks["conv1.weight"]] == 0)
    remove_masks(model)
    assert {id(p) for p in model.parameters()} == param_ids
    for name, mask in masks.items():
        weight = model.get_parameter(name)
        assert torch.all(weight[~mask] == 0) and torch.all(weight[mask] != 0)


def test_magnitude_keeps_largest_and_model_untouched():
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    masks = find_masks(model, "magnitude", density=0.1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    kept = torch.cat([model.get_parameter(n).abs()[m] for n, m in masks.items()])
    pruned = torch.cat([model.get_parameter(n).abs()[~m] for n, m in masks.items()])
    assert kept.min() > pruned.max()


def test_threshold_global_and_local():
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0, 20.0)}
    g = threshold_masks(scores, 0.25, "global")
    assert g["a"].sum() == 0 and g["b"].sum() == 5  # k = 15, keep the 5 scores > 14
    loc = threshold_masks(scores, 0.5, "local")
    assert loc["a"].tolist() == [False] * 5 + [True] * 5


def test_exponential_schedule_reaches_density():
    s = density_schedule(0.018, 100)
    assert s[-1] == pytest.approx(0.018) and s[0] == pytest.approx(0.018**0.01)


def test_random_iterative_continues_from_existing_masks():
    model = small_cnn()
    first = find_masks(model, "random", density=0.5, seed=1)
    apply_masks(model, first)
    second = find_masks(model, "random", density=0.1, seed=2)
    for n in first:
        assert not torch.any(second[n] & ~first[n])  # pruned weights never come back


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"density": 0.5, "rounds": 0}, "rounds"),
        ({"density": 0.5, "include": ["nothing_here"]}, "include"),
    ],
)
def test_bad_arguments_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        find_masks(small_cnn(), "magnitude", **kwargs)


def test_unknown_method_lists_known():
    with pytest.raises(ValueError, match="magnitude"):
        compute_scores(small_cnn(), "nope")


def test_model_without_prunable_tensor():
    with pytest.raises(ValueError, match="no prunable"):
        compute_scores(nn.Sequential(nn.ReLU()), "magnitude")


def test_collapse_is_warned_and_reported():
    model = small_cnn()
    with torch.no_grad():
        model.hidden.weight.mul_(1e-6)
    with pytest.warns(UserWarning, match="hidden.weight"):
        masks = find_masks(model, "magnitude", density=0.05)
    apply_masks(model, masks)
    assert sparsity_report(model)["layers"]["hidden.weight"]["collapsed"]


@pytest.mark.parametrize("method", ["px", "snip", "grasp", "synflow"])
def test_empty_batches_are_refused(method):
    with pytest.raises(ValueError, match="batches is empty"):
        find_masks(small_cnn(), method, iter([]), density=0.5, rounds=2)


def test_generator_batches_serve_every_round():
    batches = ((torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])) for _ in range(2))
    masks = find_masks(small_cnn(), "px", batches, density=0.2, rounds=3)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(kept / total - 0.2) < 0.01


@pytest.mark.parametrize(
    ("method", "rounds"), [("snip", 1), ("magnitude", 1), ("synflow", 100), ("ntksap", 20)]
)
def test_rounds_default_to_the_methods_published_count(method, rounds):
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,)))]
    seen = []
    find_masks(net, method, batches, density=0.5, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (rounds, rounds)


# --- the global threshold against a straightforward reference (concatenate, sort, take the k-th) ---

KINDS = ["uniform", "signed", "ties", "signed_ties", "extremes", "nan", "narrow"]


def _reference_global(scores: dict, density: float) -> dict:
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int((1.0 - density) * flat.numel())
    if k < 1:
        return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    threshold = torch.sort(flat).values[k - 1]  # ascending, NaN last (where torch.kthvalue ranks it)
    return {n: s > threshold for n, s in scores.items()}


def _case(kind: str, dtype: torch.dtype, gen: torch.Generator) -> dict:
    out = {}
    for i in range(int(torch.randint(1, 7, (1,), generator=gen))):
        shape = tuple(
            int(d)
            for d in torch.randint(1, 12, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen)
        )
        if kind == "uniform":
            s = torch.rand(shape, generator=gen, dtype=torch.float64)
        elif kind == "signed":  # GraSP-like, over many orders of magnitude
            scale = 10.0 ** float(torch.randint(-30, 30, (1,), generator=gen))
            s = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        elif kind == "ties":  # few distinct values, many zeros (pruned weights, magnitude of rounded weights)
            s = torch.randint(0, 3, shape, generator=gen).double() * 0.25
        elif kind == "signed_ties":  # negative ties, and -0.0 next to +0.0
            s = torch.randint(-2, 3, shape, generator=gen).double() * 0.5
            s[torch.rand(shape, generator=gen) < 0.3] = -0.0
        elif kind == "extremes":  # infinities (pruned ranked last, floor reservations), subnormals
            s = torch.randn(shape, generator=gen, dtype=torch.float64) * 1e-310
            s[torch.rand(shape, generator=gen) < 0.3] = float("-inf")
            s[torch.rand(shape, generator=gen) < 0.2] = float("inf")
        elif kind == "narrow":  # distinct values sharing their top bits: every radix pass has work
            s = 1.0 + torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0**-20
            s[torch.rand(shape, generator=gen) < 0.5] *= -1
        else:  # NaN of both signs (find_masks refuses them; threshold_masks prunes them, as published)
            s = torch.randn(shape, generator=gen, dtype=torch.float64)
            s[torch.rand(shape, generator=gen) < 0.2] = float("nan")
            s[torch.rand(shape, generator=gen) < 0.2] = -float("nan")
        out[f"layer{i}.weight"] = s.to(dtype)
    return out


DENSITIES = (1.0, 0.99, 0.5, 0.2, 0.02, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_global_threshold_equals_concatenate_and_sort(dtype, kind, monkeypatch):
    gen = torch.Generator().manual_seed(KINDS.index(kind))
    if dtype in (torch.float32, torch.float64):  # chunks of the largest tensor's size, not one chunk
        monkeypatch.setattr(schedule, "_CHUNK", 1)
    for _ in range(10 if dtype in (torch.float32, torch.float64) else 3):
        scores = _case(kind, dtype, gen)
        for density in DENSITIES:
            got = threshold_masks(scores, density, "global")
            want = _reference_global(scores, density)
            assert all(torch.equal(got[n], want[n]) for n in scores), (kind, density, scores)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gather", [0, 10**9])
def test_kth_smallest_every_pass_and_the_gathered_tail(dtype, gather):
    # gather=0: every 16-bit radix pass down to the last bit; a large one: gather after the first pass.
    gen = torch.Generator().manual_seed(20 + gather % 7)
    for kind in KINDS:
        scores = _case(kind, dtype, gen)
        flat = torch.sort(torch.cat([s.flatten() for s in scores.values()])).values
        for k in {1, 2, flat.numel() // 3, flat.numel() // 2, flat.numel() - 1, flat.numel()} - {0}:
            got = _kth_smallest(lambda s=scores: s.values(), k, dtype, torch.device("cpu"), gather)
            want = flat[k - 1]
            assert got.dtype == dtype and (torch.equal(got, want) or (got.isnan() and want.isnan())), (
                kind,
                k,
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["uniform", "ties", "signed_ties"])
def test_layer_floor_equals_reference(dtype, kind):
    # The published-style reference: copy the scores, give each tensor's best positive ones +inf.
    gen = torch.Generator().manual_seed(10 + KINDS.index(kind))
    for _ in range(8):
        scores = _case(kind, dtype, gen)
        for density in (0.5, 0.1, 0.02):
            if density * sum(s.numel() for s in scores.values()) < 1:
                continue  # keeps no weight: refused with an error
            floored = {}
            for n, s in scores.items():
                want = min(math.ceil(0.5 * density * s.numel()), int((s > 0).sum()))
                s = s.clone()
                if want:
                    s.view(-1)[torch.topk(s.flatten(), want).indices] = float("inf")
                floored[n] = s
            got = threshold_masks(scores, density, "global", layer_floor=0.5)
            want = _reference_global(floored, density)
            assert all(torch.equal(got[n], want[n]) for n in scores), (kind, density)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grasp_continuing_ranks_pruned_weights_last(dtype):
    # GraSP scores are signed: a pruned weight (score 0) must rank below kept weights' negative scores.
    model = small_cnn().to(dtype)
    batches = [(torch.randn(4, 3, 16, 16, dtype=dtype), torch.tensor([0, 1, 2, 3]))]
    first = find_masks(model, "magnitude", density=0.5)
    apply_masks(model, first)
    scores = compute_scores(model, "grasp", batches)
    assert any(bool((s < 0).any()) for s in scores.values())  # the case this test is about
    ranked = {n: s.masked_fill(~first[n], float("-inf")) for n, s in scores.items()}
    want = {n: m & first[n] for n, m in _reference_global(ranked, 0.45).items()}
    # At 0.45 of 0.5 kept, the k-th smallest falls among the pruned weights' zeros if they are not last.
    unranked = {n: m & first[n] for n, m in _reference_global(scores, 0.45).items()}
    assert any(not torch.equal(want[n], unranked[n]) for n in want)
    got = find_masks(model, "grasp", batches, density=0.45, rounds=1)
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_density_one_and_a_target_above_the_current_masks_score_nothing():
    model = small_cnn()
    scorer = CountingMagnitude()
    masks = find_masks(model, scorer, density=1.0, rounds=5)
    assert scorer.calls == 0 and all(bool(m.all()) for m in masks.values())

    apply_masks(model, find_masks(model, "magnitude", density=0.25))
    before = {n: m.clone() for n, m in get_masks(model).items()}
    with pytest.warns(
        UserWarning,
        match=r"already keep less than density 0\.5 \(global scope; kept now: 0\.25.*nothing pruned",
    ):
        again = find_masks(model, scorer, density=0.5, rounds=3)
    assert scorer.calls == 0
    assert all(torch.equal(again[n], before[n]) for n in before)


def test_ties_at_the_threshold_that_cut_the_density_are_reported():
    # Ternary weights: magnitude scores take two values, so a threshold falls inside a tie.
    model = nn.Sequential(nn.Linear(30, 30, bias=False), nn.ReLU(), nn.Linear(30, 10, bias=False))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(torch.randint(-1, 2, layer.weight.shape).float())
    nonzero = sum(int((layer.weight != 0).sum()) for layer in (model[0], model[2]))
    with pytest.warns(UserWarning, match=r"magnitude kept \d+ weights where density 0\.9 asks for \d+.*tied"):
        masks = find_masks(model, "magnitude", density=0.9)
    assert sum(int(m.sum()) for m in masks.values()) == nonzero < 0.85 * 1200
    # No warning when the scores separate the weights.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        find_masks(small_cnn(), "magnitude", density=0.3)


def test_an_infeasible_dense_head_fails_before_any_scoring():
    model = small_cnn()
    targets = prunable_parameters(model)
    head = list(targets)[-1]
    params = dict(model.named_parameters())
    too_low = 0.5 * params[head].numel() / sum(params[n].numel() for n in targets)
    x = torch.randn(4, 3, 16, 16)
    scorer = CountingPX(dense_head=True)
    with pytest.raises(ValueError, match=rf"keeps .* not more than the dense tensors \['{head}'\]"):
        find_masks(model, scorer, [x], density=too_low, rounds=10)
    assert scorer.calls == 0


def test_local_scope_prunes_the_unmasked_layers_of_a_partly_masked_model():
    # One layer already far below the density, the others unmasked: local scope brings each of those to
    # the density (no early return on the global count) and says nothing of ties for the masked one.
    model = small_cnn()
    apply_masks(
        model, {"conv1.weight": find_masks(model, "magnitude", density=0.02, scope="local")["conv1.weight"]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = find_masks(model, "magnitude", density=0.1, scope="local")
    assert float(masks["conv1.weight"].float().mean()) < 0.05
    for name in ("conv2.weight", "hidden.weight", "fc.weight"):
        n = masks[name].numel()
        assert int(masks[name].sum()) == n - int(0.9 * n), name


def test_bad_scope_or_schedule_refused_even_when_nothing_is_pruned():
    with pytest.raises(ValueError, match="scope must be"):
        find_masks(small_cnn(), "magnitude", density=1.0, scope="bogus")
    with pytest.raises(ValueError, match="schedule must be"):
        find_masks(small_cnn(), "magnitude", density=1.0, schedule="bogus")


def test_scoring_batches_are_moved_to_the_device_once_keeping_their_structure():
    # find_masks copies the batches to an accelerator once for all rounds; "meta" stands in for a GPU here.
    from collections import namedtuple

    from px_lightning.pruning.search import _on_device

    Pair = namedtuple("Pair", "inputs targets")
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    batches = [(x, y), [x, y, "id"], Pair(x, y), x]
    moved = _on_device(batches, torch.device("meta"))
    assert [type(b) for b in moved] == [tuple, list, Pair, torch.Tensor]
    assert moved[1][2] == "id"
    leaves = [moved[0][0], moved[0][1], moved[1][0], moved[1][1], moved[2].inputs, moved[2].targets, moved[3]]
    assert all(t.device.type == "meta" for t in leaves)
    assert moved[0][1].dtype == torch.int64 and moved[3].shape == x.shape
    # On the CPU, and for batches without tensors, the caller's objects are used as they are.
    assert _on_device(batches, torch.device("cpu")) is batches
    assert _on_device([["a"]], torch.device("meta")) == [["a"]]


def test_find_masks_scores_every_round_on_the_batches_on_the_models_device():
    seen = []

    class Recording(MagnitudeScorer):
        needs_data = True

        def score(self, model, weights, masks, batches, loss_fn=None):
            seen.append([b[0] for b in batches])
            return super().score(model, weights, masks, batches, loss_fn)

    model = small_cnn()
    data = [(torch.randn(2, 3, 16, 16), torch.tensor([0, 1])) for _ in range(2)]
    find_masks(model, Recording(), data, density=0.5, rounds=3)
    # Same tensors each round (no per-round copy), on the CPU the caller's own.
    assert len(seen) == 3 and all(r[i] is data[i][0] for r in seen for i in range(2))
