"""PX as it ran for the paper (variant "cvpr2024", the April-2024 code): scores and iterative masks of
../shared/conformance/px2024_*.pt reproduced, and the variant's contracts (model untouched, well-posed in
float32, thread-count independent, exactly shardable over batches, pruned weights score 0)."""

import copy

import pytest
import torch
from helpers import TOLERANCE, conformance_models, load_conformance, relative_error
from torch import nn

from px_lightning.pruning import apply_masks, compute_scores, find_masks
from px_lightning.pruning.scorers import PXScorer
from px_lightning.pruning.scorers.px import DEFAULT_VARIANT, VARIANTS

FILES = ["px2024_small_cnn.pt", "px2024_resnet20.pt"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FILES)
def test_cvpr2024_scores_match_the_2024_code(name, dtype):
    fixture, model, batches = load_conformance(name, dtype)
    assert fixture["variant"] == "cvpr2024"
    scores = compute_scores(model, "px", batches, variant="cvpr2024")
    assert set(scores) == set(fixture["scores"])
    for param, ref in fixture["scores"].items():
        assert scores[param].dtype == dtype
        err = relative_error(scores[param], ref)
        assert err <= TOLERANCE[dtype], (param, err)


@pytest.mark.parametrize("name", FILES)
def test_cvpr2024_iterative_masks_match_the_2024_code_float64(name):
    fixture, model, batches = load_conformance(name, torch.float64)
    recipe = {"density": fixture["density"], "rounds": fixture["rounds"], "variant": "cvpr2024"}
    masks = find_masks(model, "px", batches, scope="global", schedule="exponential", **recipe)
    assert set(masks) == set(fixture["masks"])
    for param, ref in fixture["masks"].items():
        assert torch.equal(masks[param].cpu(), ref), param


@pytest.mark.parametrize("train_mode", [False, True])
def test_cvpr2024_leaves_the_model_untouched(train_mode):
    # The copies run in train() mode: the caller's BatchNorm statistics, weights and modes stay as they are.
    _, model, batches = load_conformance("px2024_small_cnn.pt", torch.float64)
    model.train(train_mode)
    with torch.no_grad():  # statistics away from 0/1, so a write into them would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(model.state_dict())
    modes = {n: m.training for n, m in model.named_modules()}
    find_masks(model, "px", batches, density=0.2, rounds=2, variant="cvpr2024")
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def _tiny_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Dropout(0.5), nn.Linear(7, 3)
    ).double()


def test_cvpr2024_matches_a_direct_computation():
    # f = L2(drop(relu(BN(L1 x)))) in train mode (batch statistics), dropout off: z1 = f(x);
    # the kernel squares both linears' weights and biases, relu is the identity, same x, train-mode BN;
    # score = |d(z1 . z2)/d(w^2)| * |w|^5.
    model = _tiny_bn_net().eval()
    x = torch.randn(8, 5, dtype=torch.float64)
    l1, bn, l2 = model[0], model[1], model[4]

    def bn_train(h):
        return (h - h.mean(0)) / (h.var(0, unbiased=False) + bn.eps).sqrt() * bn.weight + bn.bias

    with torch.no_grad():
        z1 = l2(torch.relu(bn_train(l1(x))))
    s1, s2 = (l1.weight.detach() ** 2).requires_grad_(), (l2.weight.detach() ** 2).requires_grad_()
    z2 = bn_train(x @ s1.T + l1.bias.detach() ** 2) @ s2.T + l2.bias.detach() ** 2
    (z1 * z2).sum().backward()
    expected = {
        "0.weight": s1.grad.abs() * l1.weight.detach().abs() ** 5,
        "4.weight": s2.grad.abs() * l2.weight.detach().abs() ** 5,
    }
    got = compute_scores(model, "px", [x], variant="cvpr2024")
    for name, ref in expected.items():
        assert torch.allclose(got[name], ref, rtol=1e-12, atol=0), name
    assert torch.equal(got["0.weight"], compute_scores(model, "px", [x], variant="cvpr2024")["0.weight"])


@pytest.mark.parametrize("variant", ["cvpr2024", "2025-eval"])
def test_px_shards_exactly_through_its_gradient_sums(variant):
    # Scores are |sum over batches| * ...: not the sum of each batch's scores, but
    # the signed gradient sums add up over the batches, so ranks may sum their shares and finish.
    _, model, batches = load_conformance("px2024_small_cnn.pt", torch.float64)
    scorer = PXScorer(variant=variant)
    assert scorer.shardable
    assert not PXScorer(bn_warmup=True).shardable
    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    both = compute_scores(model, "px", batches, variant=variant)
    shares = [scorer.gradient_sums(model, weights, masks, [b]) for b in batches]
    summed = {n: shares[0][n] + shares[1][n] for n in weights}
    sharded = scorer.scores_from_sums(summed, weights, masks)
    per_batch = [scorer.scores_from_sums(s, weights, masks) for s in shares]
    for name, s in both.items():
        assert torch.allclose(sharded[name], s, rtol=1e-10, atol=0), name
    assert any(not torch.allclose(per_batch[0][n] + per_batch[1][n], both[n]) for n in both)


def test_cvpr2024_masks_do_not_depend_on_the_thread_count():
    # A BatchNorm CNN in float32, where the 2025 code's train-mode kernel gave thread-dependent masks.
    torch.manual_seed(1)
    model = conformance_models.kaiming_init(conformance_models.build("small_cnn")).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.arange(8) % 10) for _ in range(2)]
    threads = torch.get_num_threads()
    try:
        found = []
        for n in (1, 2):
            torch.set_num_threads(n)
            found.append(find_masks(model, "px", batches, density=0.05, rounds=5, variant="cvpr2024"))
    finally:
        torch.set_num_threads(threads)
    for name in found[0]:
        assert torch.equal(found[0][name], found[1][name]), name


def test_cvpr2024_float32_agrees_with_float64_on_resnet20():
    torch.manual_seed(2)
    model = conformance_models.kaiming_init(conformance_models.build("resnet20")).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    low = compute_scores(model, "px", [x], variant="cvpr2024")
    high = compute_scores(copy.deepcopy(model).double(), "px", [x.double()], variant="cvpr2024")
    # Float round-off through 20 BatchNorm layers in train mode: ~1e-4 relative (the fixture's ResNet-20:
    # 6e-5), against orders of magnitude for the 2025 code's train-mode kernel on the same model.
    for name in high:
        assert relative_error(low[name], high[name]) <= 1e-3, name
    with pytest.warns(UserWarning, match="round-off"):
        low_2025 = compute_scores(model, "px", [x], variant="2025")
    with pytest.warns(UserWarning, match="round-off"):
        high_2025 = compute_scores(copy.deepcopy(model).double(), "px", [x.double()], variant="2025")
    assert max(relative_error(low_2025[n], high_2025[n]) for n in high_2025) > 1e-2


def test_cvpr2024_pruned_weights_score_zero_and_never_return():
    _, model, batches = load_conformance("px2024_small_cnn.pt", torch.float64)
    g = torch.Generator().manual_seed(0)
    masks = {
        n: torch.rand(p.shape, generator=g) > 0.5
        for n, p in model.named_parameters()
        if n.endswith("weight") and p.dim() > 1
    }
    masked = apply_masks(copy.deepcopy(model), masks)
    scores = compute_scores(masked, "px", batches, variant="cvpr2024")
    for name, mask in masks.items():
        assert not bool(scores[name][~mask].any()), name
        assert bool((scores[name][mask] > 0).any()), name
    # Iterated from the masked model: every round's masks lie inside the previous ones.
    previous = masks
    for density in (0.3, 0.2, 0.1):
        new = find_masks(masked, "px", batches, density=density, rounds=1, variant="cvpr2024")
        for name in new:
            assert not bool((new[name] & ~previous[name]).any()), name
        apply_masks(masked, new)
        previous = new


def test_variant_names_and_kernel_norm():
    assert VARIANTS == ("cvpr2024", "2025", "2025-eval")
    assert PXScorer().variant == DEFAULT_VARIANT
    # kernel_norm keeps its 2025 meaning whatever the default variant is.
    assert PXScorer(kernel_norm="train").variant == "2025"
    assert PXScorer(kernel_norm="eval").variant == "2025-eval"
    assert PXScorer(variant="2025", kernel_norm="train").kernel_norm == "train"
    assert PXScorer(variant="cvpr2024", dense_head=True, layer_floor=0.1).kernel_norm is None


def test_unknown_variant_is_refused_listing_the_known_ones():
    _, model, batches = load_conformance("px2024_small_cnn.pt", torch.float64)
    with pytest.raises(
        ValueError, match=r"variant must be one of 'cvpr2024', '2025', '2025-eval', got 'cvpr'"
    ):
        compute_scores(model, "px", batches, variant="cvpr")


@pytest.mark.parametrize(
    "option", [{"head": "body"}, {"bn_warmup": True}, {"bn_warmup": False}, {"kernel_norm": "eval"}]
)
def test_an_option_the_variant_does_not_take_is_refused_naming_both(option):
    _, model, batches = load_conformance("px2024_small_cnn.pt", torch.float64)
    (name,) = option
    with pytest.raises(
        ValueError, match=rf"variant='cvpr2024' does not take the option {name}; it takes dense_head"
    ):
        find_masks(model, "px", batches, density=0.5, rounds=1, variant="cvpr2024", **option)


def test_a_variant_contradicting_kernel_norm_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"variant='2025'.*kernel_norm='eval'"):
        PXScorer(variant="2025", kernel_norm="eval")
    with pytest.raises(ValueError, match="kernel_norm must be 'eval' or 'train'"):
        PXScorer(kernel_norm="batch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cvpr2024_on_a_gpu_matches_the_2024_code():
    fixture, model, batches = load_conformance("px2024_resnet20.pt", torch.float32)
    scores = compute_scores(
        model.cuda(), "px", [(x.cuda(), y.cuda()) for x, y in batches], variant="cvpr2024"
    )
    for param, ref in fixture["scores"].items():
        assert scores[param].is_cuda
        assert relative_error(scores[param].cpu(), ref) <= TOLERANCE[torch.float32], param
