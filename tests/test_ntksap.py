"""NTK-SAP: scores against an independent re-statement (written-out forward, finite differences)."""

import copy
import math

import pytest
import torch
from torch import nn

from px_lightning.pruning import apply_masks, compute_scores, find_masks
from px_lightning.pruning.scorers import NTKSAPScorer

BN_EPS = 1e-5


def tiny_mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()


def tiny_masks():
    g = torch.Generator().manual_seed(11)
    return {"0.weight": torch.rand(8, 5, generator=g) > 0.3, "3.weight": torch.rand(3, 8, generator=g) > 0.3}


def restated_scores(b1, b2, masks, shapes, epsilon, seed, repeats):
    """NTK-SAP on Linear-BN-ReLU-Linear, written out by hand; the mask gradient by central differences.

    Per repeat and batch: fresh Kaiming-normal weights (fan-in, gain sqrt 2), Gaussian input, BatchNorm
    statistics (mean, unbiased variance) of the unperturbed masked network on that input, then
    L(m) = ||f(x; W * m) - f(x; (W + epsilon * delta) * m)||^2 with the same statistics in both.
    The random numbers are drawn in the scorer's documented order from the per-call seed.
    """
    call_seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed)))
    torch.manual_seed(call_seed)
    m1, m2 = masks["0.weight"].double(), masks["3.weight"].double()
    total1, total2 = torch.zeros_like(m1), torch.zeros_like(m2)
    for _ in range(repeats):
        for shape in shapes:
            w1 = torch.empty(8, 5, dtype=torch.float64).normal_(0, math.sqrt(2 / 5))
            w2 = torch.empty(3, 8, dtype=torch.float64).normal_(0, math.sqrt(2 / 8))
            x = torch.randn(shape, dtype=torch.float64)
            h = x @ (w1 * m1).T + b1
            mean, var = h.mean(0), h.var(0, unbiased=True)
            d1, d2 = torch.randn_like(w1), torch.randn_like(w2)

            def f(a1, a2, v1, v2, mean=mean, var=var, x=x):
                z = torch.relu((x @ (v1 * a1).T + b1 - mean) / torch.sqrt(var + BN_EPS))
                return z @ (v2 * a2).T + b2

            def loss(a1, a2, w1=w1, w2=w2, d1=d1, d2=d2, f=f):
                return float(
                    ((f(a1, a2, w1, w2) - f(a1, a2, w1 + epsilon * d1, w2 + epsilon * d2)) ** 2).sum()
                )

            step = 1e-6
            for a, total in ((m1, total1), (m2, total2)):
                for i in range(a.numel()):
                    plus, minus = a.clone(), a.clone()
                    plus.view(-1)[i] += step
                    minus.view(-1)[i] -= step
                    args_p = (plus, m2) if a is m1 else (m1, plus)
                    args_m = (minus, m2) if a is m1 else (m1, minus)
                    total.view(-1)[i] += (loss(*args_p) - loss(*args_m)) / (2 * step)
    passes = repeats * len(shapes)
    return {"0.weight": total1.abs() * m1 / passes, "3.weight": total2.abs() * m2 / passes}


def test_scores_match_restatement_on_masked_bn_mlp():
    model = tiny_mlp()
    masks = tiny_masks()
    apply_masks(model, masks)
    batches = [(torch.randn(6, 5), torch.zeros(6)), torch.randn(4, 5)]  # only the shapes are used
    scores = compute_scores(model, "ntksap", batches, epsilon=0.05, repeats=2, seed=7)
    expected = restated_scores(
        model[0].bias.detach(), model[3].bias.detach(), masks, [(6, 5), (4, 5)], 0.05, 7, 2
    )
    for name, want in expected.items():
        assert want.abs().max() > 0
        torch.testing.assert_close(scores[name], want, rtol=1e-5, atol=1e-7 * float(want.abs().max()))
        assert torch.all(scores[name][~masks[name]] == 0), name  # pruned weights score exactly 0
        assert torch.all(scores[name][masks[name]] > 0), name


def test_scores_ignore_caller_weights_but_not_architecture():
    # Scores belong to a fresh initialisation: the caller's weight values are never read.
    model = tiny_mlp()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.mul_(-3.0)
        other[3].weight.uniform_()
    batches = [torch.randn(6, 5)]
    a = compute_scores(model, "ntksap", batches, seed=1)
    b = compute_scores(other, "ntksap", batches, seed=1)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_model_untouched_and_deterministic_with_seed():
    model = tiny_mlp()
    apply_masks(model, tiny_masks())
    model.train()
    model[0].parametrizations.weight.original.grad = torch.ones(8, 5, dtype=torch.float64)
    state = copy.deepcopy(model.state_dict())
    batches = [torch.randn(6, 5)]
    rng = torch.get_rng_state()
    first = compute_scores(model, "ntksap", batches, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded run leaves the global generator alone
    second = compute_scores(model, "ntksap", batches, seed=5)
    third = compute_scores(model, "ntksap", batches, seed=6)
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not all(torch.equal(first[n], third[n]) for n in first)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items())  # BN statistics included
    assert torch.equal(model[0].parametrizations.weight.original.grad, torch.ones(8, 5, dtype=torch.float64))
    assert model[3].parametrizations.weight.original.grad is None


def test_find_masks_reproducible_rounds_differ_and_input_shape():
    model = tiny_mlp()
    masks = find_masks(model, "ntksap", input_shape=(6, 5), density=0.3, rounds=3, seed=2)
    again = find_masks(model, "ntksap", [torch.randn(6, 5)], density=0.3, rounds=3, seed=2)
    assert all(torch.equal(masks[n], again[n]) for n in masks)  # batches only give the same shape
    kept = sum(int(m.sum()) for m in masks.values())
    assert abs(kept - 0.3 * (40 + 24)) < 1
    # successive calls of one seeded scorer (the rounds of find_masks) draw new weights and inputs
    scorer = NTKSAPScorer(seed=2, input_shape=(6, 5))
    first, second = compute_scores(model, scorer), compute_scores(model, scorer)
    assert not all(torch.equal(first[n], second[n]) for n in first)


def test_conv_net_runs_and_pruned_weights_score_zero():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(64, 2),
    )
    masks = find_masks(net, "ntksap", [torch.randn(3, 3, 4, 4)], density=0.2, rounds=2, seed=0)
    apply_masks(net, masks)
    scores = compute_scores(net, "ntksap", [torch.randn(3, 3, 4, 4)], seed=1)
    for name, mask in masks.items():
        assert torch.all(scores[name][~mask] == 0) and bool(scores[name][mask].any()), name


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epsilon": 0}, "epsilon"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"repeats": 0}, "repeats"),
        ({"seed": 1.5}, "seed"),
        ({"input_shape": (3,)}, "input_shape"),
        ({"input_shape": "64x5"}, "input_shape"),
        ({"init": 3}, "init"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        compute_scores(tiny_mlp(), "ntksap", [torch.randn(4, 5)], **options)


def test_needs_batches_or_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        compute_scores(tiny_mlp(), "ntksap")
    with pytest.raises(ValueError, match="floating-point"):
        compute_scores(tiny_mlp(), "ntksap", [torch.zeros(4, 5, dtype=torch.long)])
