"""PX options against layer collapse: head on the body's scale, dense head, layer floor, BatchNorm warm-up."""

import copy
import math

import pytest
import torch
from helpers import conformance_models
from torch import nn

from px_lightning.pruning import apply_masks, compute_scores, find_masks, threshold_masks
from px_lightning.pruning.scorers.px_research import PXResearchScorer


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return conformance_models.kaiming_init(conformance_models.build("small_cnn")).double().eval()


def batches(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64) + 0.5, torch.arange(6) % 10)
        for _ in range(n)
    ]


def test_head_on_body_scale_matches_a_direct_computation():
    # f = W2 relu(W1 x): with head="body" both layers are path layers. z1 = sum_x M2 (g(x) * (M1 x^2)),
    # z2 = W2^2 W1^2 1, score(w) = |d(z1 . z2)/d(w^2)| w^2, written out here with plain autograd.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 3, bias=False)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    gates = (x @ w1.T > 0).double()
    z1 = ((gates * (x**2 @ torch.ones_like(w1).T)) @ torch.ones_like(w2).T).sum(0)
    s1, s2 = (w1**2).requires_grad_(), (w2**2).requires_grad_()
    (z1 * (s2 @ (s1 @ torch.ones(5, dtype=torch.float64)))).sum().backward()
    expected = {"0.weight": s1.grad.abs() * w1**2, "2.weight": s2.grad.abs() * w2**2}
    body = compute_scores(model, "px", [x], head="body")
    published = compute_scores(model, "px", [x])
    for name, ref in expected.items():
        assert torch.allclose(body[name], ref, rtol=1e-12, atol=0), name
    assert not torch.allclose(published["2.weight"], expected["2.weight"])


def test_dense_head_keeps_the_head_within_the_same_budget():
    model, data = small_cnn(), batches()
    plain = find_masks(model, "px", data, density=0.3, rounds=3)
    dense = find_masks(model, "px", data, density=0.3, rounds=3, dense_head=True)
    assert bool(dense["fc.weight"].all())
    assert not bool(plain["fc.weight"].all())
    kept = lambda masks: sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in plain.values())
    # Same budget: int((1 - d) * n) weights pruned in each case (up to ties at the threshold).
    assert abs(kept(dense) - kept(plain)) <= 2
    assert abs(kept(dense) - 0.3 * total) <= 2
    with pytest.raises(ValueError, match="raise the density"):
        find_masks(model, "px", data, density=0.1, rounds=1, dense_head=True)  # fc alone is 320 of 2200
    with pytest.raises(ValueError, match="dense_head"):
        find_masks(model, "px", data, density=0.5, rounds=1, dense_head=True, exclude=["fc"])


def test_layer_floor_reserves_each_layers_best_weights_within_budget():
    # Layer "a" scores far below layer "b": plain global thresholding collapses it.
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(100, generator=g) * 1e-6, "b": torch.rand(900, generator=g) + 1}
    scores["a"][:50] = 0  # pruned weights (score 0) must stay pruned
    plain = threshold_masks(scores, 0.1, "global")
    assert not bool(plain["a"].any())
    floored = threshold_masks(scores, 0.1, "global", layer_floor=0.5)
    want = math.ceil(0.5 * 0.1 * 100)
    assert int(floored["a"].sum()) == want
    assert torch.equal(floored["a"], scores["a"] >= scores["a"].topk(want).values[-1])  # its best ones
    assert not bool(floored["a"][:50].any())
    assert int(floored["a"].sum() + floored["b"].sum()) == int(plain["a"].sum() + plain["b"].sum())
    with pytest.raises(ValueError, match="layer_floor"):
        threshold_masks(scores, 0.1, layer_floor=2.0)


def test_layer_floor_in_px_keeps_every_layer_above_the_floor():
    model, data = small_cnn(), batches()
    masks = find_masks(model, "px", data, density=0.01, rounds=4, layer_floor=0.5)
    for name, m in masks.items():
        assert int(m.sum()) >= math.ceil(0.5 * 0.01 * m.numel()), name


def test_bn_warmup_equals_scoring_with_data_statistics():
    model, data = small_cnn(), batches()
    before = copy.deepcopy(model.state_dict())
    warmed = compute_scores(model, "px", data, bn_warmup=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # Reference: a copy whose BatchNorm statistics are the plain mean over the scoring batches.
    ref_model = copy.deepcopy(model)
    for m in ref_model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ref_model.train()
    with torch.no_grad():
        for x, _ in data:
            ref_model(x)
    ref_model.eval()
    expected = compute_scores(ref_model, "px", data, variant="2025-eval")
    default = compute_scores(model, "px", data, variant="2025-eval")
    for name in expected:
        assert torch.allclose(warmed[name], expected[name], rtol=1e-10, atol=0), name
    assert any(not torch.allclose(warmed[n], default[n]) for n in default)


def test_bad_options_are_named():
    model, data = small_cnn(), batches()
    with pytest.raises(ValueError, match="head"):
        compute_scores(model, "px", data, head="real")
    with pytest.raises(ValueError, match="layer_floor"):
        compute_scores(model, "px", data, layer_floor=1.5)
    with pytest.raises(TypeError, match="bn_warmup"):
        compute_scores(model, "px", data, bn_warmup="yes")


def test_layer_norm_sum_divides_each_layers_scores_by_its_total():
    model, data = small_cnn(), batches()
    raw = compute_scores(model, "px", data, variant="2025-eval")
    normed = compute_scores(model, PXResearchScorer(layer_norm="sum"), data)
    for name, s in raw.items():
        assert torch.allclose(normed[name], s / s.sum(), rtol=1e-12, atol=0), name
        assert math.isclose(float(normed[name].sum()), 1.0, rel_tol=1e-9), name
    # The raw layer totals differ, so the normalisation changes the global ranking, not just the scale.
    totals = [float(s.sum()) for s in raw.values()]
    assert max(totals) / min(totals) > 1.5
    # Why it is a no-op on a plain chain with head="body": there PX already conserves the score per layer
    # (every layer's total is the same z1 . z2), so the option only matters for branches or the head.
    body = [float(s.sum()) for s in compute_scores(model, "px", data, head="body").values()]
    assert max(body) / min(body) < 1.01


def test_layer_norm_sum_keeps_pruned_weights_pruned_and_balances_the_layers():
    model, data = small_cnn(), batches()
    masks = find_masks(model, PXResearchScorer(layer_norm="sum"), data, density=0.02, rounds=4)
    kept = {n: int(m.sum()) for n, m in masks.items()}
    assert all(k > 0 for k in kept.values()), kept  # no layer collapses
    # Iterated per-layer conservation keeps comparable counts in every layer (raw PX does not here).
    assert max(kept.values()) <= 4 * min(kept.values()), kept
    # A fully pruned layer (all-zero scores) stays all zero instead of becoming NaN.
    emptied = {n: torch.ones_like(m) for n, m in masks.items()}
    emptied["conv2.weight"] = torch.zeros_like(masks["conv2.weight"])
    scores = compute_scores(
        apply_masks(copy.deepcopy(model), emptied), PXResearchScorer(layer_norm="sum"), data
    )
    assert not bool(scores["conv2.weight"].any())
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())
    with pytest.raises(ValueError, match="layer_norm"):
        compute_scores(model, PXResearchScorer(layer_norm="mean"), data)


class _Residual(nn.Module):
    """x -> a -> relu -> [b -> relu -> c] + s -> relu -> head: one branch of two layers, one shortcut layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 6, bias=False), nn.Linear(6, 6, bias=False)
        self.c, self.s = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.head(torch.relu(self.c(torch.relu(self.b(h))) + self.s(h)))


def test_kernel_scale_mean_square_matches_a_direct_computation_on_a_residual_block():
    torch.manual_seed(0)
    model = _Residual().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    w = {n: m.weight.detach() for n, m in model.named_children()}
    # A pruned branch weight: the kernel is masked, the layer's factor stays its unmasked mean square.
    mask_b = torch.ones(6, 6, dtype=torch.bool)
    mask_b[0, :3] = False
    masked = apply_masks(copy.deepcopy(model), {"b.weight": mask_b})
    # Data term (head="body": every layer a path layer, weights 1 / the mask, gates of the real network).
    h = x @ w["a"].T
    g1 = h > 0
    g2 = torch.relu(h) @ (w["b"] * mask_b).T > 0
    g3 = torch.relu(torch.relu(h) @ (w["b"] * mask_b).T) @ w["c"].T + torch.relu(h) @ w["s"].T > 0
    one = lambda n: torch.ones_like(w[n])
    d1 = g1 * (x**2 @ one("a").T)
    z1 = ((g3 * ((g2 * (d1 @ mask_b.double().T)) @ one("c").T + d1 @ one("s").T)) @ one("head").T).sum(0)
    # Kernel: squared weights, each divided by its layer's mean squared weight (unmasked).
    sq = {n: (v**2).requires_grad_() for n, v in w.items()}
    k = {n: sq[n] * (mask_b if n == "b" else 1) / (v**2).mean() for n, v in w.items()}
    k1 = k["a"] @ torch.ones(5, dtype=torch.float64)
    z2 = k["head"] @ (k["c"] @ (k["b"] @ k1) + k["s"] @ k1)
    (z1 * z2).sum().backward()
    expected = {f"{n}.weight": sq[n].grad.abs() * w[n] ** 2 * (mask_b if n == "b" else 1) for n in w}
    default = compute_scores(masked, "px", [x], head="body")
    weights = {f"{n}.weight": v for n, v in w.items()}
    masks = {n: torch.ones_like(v, dtype=torch.bool) for n, v in weights.items()}
    masks["b.weight"] = mask_b
    # As find_masks calls it: the unmasked weights and the current masks.
    scaled = PXResearchScorer(head="body", kernel_scale="mean_square").score(model, weights, masks, [x])
    for name, ref in expected.items():
        assert torch.allclose(scaled[name], ref, rtol=1e-12, atol=0), name
    # It moves score from the shortcut to the branch: the shortcut's share drops below the default's.
    share = lambda s: float(s["s.weight"].sum() / s["b.weight"].sum())
    assert share(scaled) < 0.5 * share(default)


def _chain(outputs: int) -> nn.Module:
    """Three bias-free Linear layers with ReLUs (5 -> 7 -> 6 -> outputs), float64."""
    torch.manual_seed(0)
    layers = [nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 6, bias=False), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(6, outputs, bias=False)).double()


def test_kernel_scale_mean_square_only_rescales_a_chain():
    # On a chain every path crosses every layer: all scores change by the product of the layers' factors.
    model = _chain(outputs=3)
    x = torch.randn(4, 5, dtype=torch.float64)
    plain = compute_scores(model, "px", [x], head="body")
    scaled = compute_scores(model, PXResearchScorer(head="body", kernel_scale="mean_square"), [x])
    factor = math.prod(float((m.weight.detach() ** 2).mean()) for m in model if isinstance(m, nn.Linear))
    for name in plain:
        assert torch.allclose(scaled[name] * factor, plain[name], rtol=1e-10, atol=0), name
    assert abs(factor - 1) > 0.1  # so the check above would fail if the option did nothing


def _linear_bn_linear():
    """Linear -> BatchNorm1d -> ReLU -> Linear (float64, eval), BatchNorm statistics and affine parameters
    away from their 0/1 initial values."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 7, bias=False), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3, bias=False)
    )
    model = model.double().eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.3, 0.3)
    return model


def _squared_bn_reference(model, x):
    """Linear -> BatchNorm1d -> ReLU -> Linear, head="body", BatchNorm as (gamma / sigma)^2 in the kernel."""
    lin, bn, head = model[0], model[1], model[3]
    w1, w2 = lin.weight.detach(), head.weight.detach()
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    sigma = (bn.running_var + bn.eps).sqrt()
    gates = ((x @ w1.T - bn.running_mean) / sigma * gamma + beta) > 0
    h = x**2 @ torch.ones_like(w1).T  # data path: train-mode BatchNorm (batch statistics)
    h = (h - h.mean(0)) / (h.var(0, unbiased=False) + bn.eps).sqrt() * gamma + beta
    z1 = ((gates * h) @ torch.ones_like(w2).T).sum(0)
    s1, s2 = (w1**2).requires_grad_(), (w2**2).requires_grad_()
    z2 = s2 @ ((gamma / sigma) ** 2 * (s1 @ torch.ones(w1.shape[1], dtype=torch.float64)))
    (z1 * z2).sum().backward()
    return {"0.weight": s1.grad.abs() * w1**2, "3.weight": s2.grad.abs() * w2**2}


def test_kernel_bn_squared_matches_a_direct_computation():
    model = _linear_bn_linear()
    x = torch.randn(8, 5, dtype=torch.float64)
    expected = _squared_bn_reference(model, x)
    got = compute_scores(model, PXResearchScorer(head="body", kernel_bn="squared"), [x])
    affine = compute_scores(model, "px", [x], head="body")
    for name, ref in expected.items():
        assert torch.allclose(got[name], ref, rtol=1e-12, atol=0), name
    assert not torch.allclose(affine["0.weight"], expected["0.weight"], rtol=1e-3)


def test_kernel_bn_squared_with_warmup_is_invariant_to_the_scale_of_a_conv_before_batchnorm():
    # BatchNorm makes the network's function independent of the scale of the conv before it; with warmed-up
    # statistics and squared BatchNorm factors, PX's scores are too (up to BatchNorm's eps).
    model, data = small_cnn(), batches()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.conv2.weight.mul_(3.0)
        scaled.conv2.bias.mul_(3.0)
    opts = {"head": "body", "bn_warmup": True}
    a = compute_scores(model, PXResearchScorer(kernel_bn="squared", **opts), data)
    b = compute_scores(scaled, PXResearchScorer(kernel_bn="squared", **opts), data)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=0), name
    a_affine = compute_scores(model, "px", data, **opts)
    b_affine = compute_scores(scaled, "px", data, **opts)
    assert not all(torch.allclose(a_affine[n], b_affine[n], rtol=1e-2) for n in a_affine)


def test_kernel_options_are_validated():
    model, data = small_cnn(), batches()
    with pytest.raises(ValueError, match="kernel_bn"):
        compute_scores(model, PXResearchScorer(kernel_bn="square"), data)
    with pytest.raises(ValueError, match="kernel_norm='eval'"):
        compute_scores(model, PXResearchScorer(kernel_bn="squared", kernel_norm="train"), data)
    with pytest.raises(ValueError, match="kernel_scale"):
        compute_scores(model, PXResearchScorer(kernel_scale="fan_in"), data)


@pytest.mark.parametrize("option", [{"kernel_bn": "squared"}, {"data_bn": "identity"}])
def test_options_that_need_batchnorm_statistics_say_so(option):
    no_stats = nn.Sequential(
        nn.Linear(5, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.ReLU(), nn.Linear(4, 2)
    )
    name, value = next(iter(option.items()))
    with pytest.raises(ValueError, match=rf"{name}='{value}' needs .*'1' has track_running_stats=False"):
        compute_scores(
            no_stats.double(), PXResearchScorer(**option), [torch.randn(4, 5, dtype=torch.float64)]
        )


def test_data_bn_identity_matches_a_direct_computation():
    # Linear -> BatchNorm1d -> ReLU -> Linear, head="body": the data path skips the BatchNorm (identity), the
    # gates and the kernel copy are PX's usual ones (eval-mode BatchNorm with the model's statistics).
    model = _linear_bn_linear()
    lin, bn, head = model[0], model[1], model[3]
    w1, w2 = lin.weight.detach(), head.weight.detach()
    gamma, beta, sigma = bn.weight.detach(), bn.bias.detach(), (bn.running_var + bn.eps).sqrt()
    x = torch.randn(8, 5, dtype=torch.float64)
    gates = ((x @ w1.T - bn.running_mean) / sigma * gamma + beta) > 0
    z1 = ((gates * (x**2 @ torch.ones_like(w1).T)) @ torch.ones_like(w2).T).sum(0)
    s1, s2 = (w1**2).requires_grad_(), (w2**2).requires_grad_()
    ones = torch.ones(5, dtype=torch.float64)
    z2 = s2 @ ((s1 @ ones - bn.running_mean) / sigma * gamma + beta)  # eval-mode BatchNorm, affine
    (z1 * z2).sum().backward()
    expected = {"0.weight": s1.grad.abs() * w1**2, "3.weight": s2.grad.abs() * w2**2}
    got = compute_scores(model, PXResearchScorer(head="body", data_bn="identity"), [x])
    for name, ref in expected.items():
        assert torch.allclose(got[name], ref, rtol=1e-12, atol=0), name
    published = compute_scores(model, "px", [x], head="body")
    assert not torch.allclose(published["0.weight"], expected["0.weight"], rtol=1e-3)
    # The caller's BatchNorm is untouched, and the option is validated.
    assert model[1].weight.min() >= 0.5 and float(model[1].running_var.min()) >= 0.5
    with pytest.raises(ValueError, match="data_bn"):
        compute_scores(model, PXResearchScorer(data_bn="eval"), [x])


def test_kernel_power_one_gives_synflow_scores_weighted_by_the_data_path():
    # One output, no biases, head="body": the kernel copy with |w| is SynFlow's network, so PX's scores are
    # SynFlow's times the data path's scalar z1 (the same factor for every weight).
    model = _chain(outputs=1)
    x = torch.randn(8, 5, dtype=torch.float64)
    px = compute_scores(model, PXResearchScorer(head="body", kernel_power=1), [x])
    synflow = compute_scores(model, "synflow", [x])
    ratios = torch.cat([(px[n] / synflow[n]).flatten() for n in px])
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-10, atol=0)
    assert float(ratios[0]) > 0
    # The published power (2) ranks differently, and kernel_power is validated.
    squared = compute_scores(model, "px", [x], head="body")
    assert not torch.equal(squared["2.weight"].flatten().argsort(), px["2.weight"].flatten().argsort())
    for bad in (3, True, "1"):
        with pytest.raises(ValueError, match="kernel_power"):
            compute_scores(model, PXResearchScorer(kernel_power=bad), [x])
    with pytest.raises(ValueError, match="kernel_power=1"):
        compute_scores(model, PXResearchScorer(kernel_power=1, kernel_scale="mean_square"), [x])


def test_output_weighting_uniform_with_kernel_power_one_is_synflow_on_a_masked_model():
    # On a masked model the data path's per-class output z1 differs between classes (here: class 0 keeps
    # one head weight, class 1 all of them), so published PX with |w| is SynFlow reweighted per class;
    # with output_weighting="uniform" the weighting is gone and the scores are SynFlow's up to one factor.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6, bias=False), nn.ReLU(), nn.Linear(6, 2, bias=False)).double()
    head_mask = torch.ones(2, 6, dtype=torch.bool)
    head_mask[0, 1:] = False
    apply_masks(model, {"2.weight": head_mask})
    x = torch.randn(8, 5, dtype=torch.float64)
    synflow = compute_scores(model, "synflow", [x])

    def ratios(scores):
        return torch.cat([(scores[n] / synflow[n])[synflow[n] > 0] for n in scores])

    uniform = ratios(
        compute_scores(model, PXResearchScorer(head="body", kernel_power=1, output_weighting="uniform"), [x])
    )
    assert torch.allclose(uniform, uniform[0].expand_as(uniform), rtol=1e-10, atol=0)
    per_class = ratios(compute_scores(model, PXResearchScorer(head="body", kernel_power=1), [x]))
    assert float(per_class.max() / per_class.min()) > 1.5
    with pytest.raises(ValueError, match="output_weighting"):
        compute_scores(model, PXResearchScorer(output_weighting="balanced"), [x])
