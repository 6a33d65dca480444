"""nn.MultiheadAttention written out (pruning/attention.py) and its probabilities frozen by FrozenFactors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from px_lightning.pruning import attention
from px_lightning.pruning.factors import FrozenFactors


class WrittenOut(TorchFunctionMode):
    """Every restatable F.multi_head_attention_forward call computed by attention.written_out."""

    def __init__(self):
        super().__init__()
        self.restated = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            arguments = attention.bind(args, kwargs)
            if attention.restatable(arguments):
                self.restated += 1
                return attention.written_out(arguments, attention.softmax_attention)
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "options",
    [{"batch_first": True}, {}, {"kdim": 6, "vdim": 5, "batch_first": True}, {"bias": False}],
    ids=["batch_first", "sequence_first", "separate_projections", "no_bias"],
)
@pytest.mark.parametrize("masked", [False, True])
def test_written_out_attention_gives_the_fused_output(options, masked):
    torch.manual_seed(0)
    module = nn.MultiheadAttention(8, 2, **options).eval()
    with torch.no_grad():  # non-zero projection biases, so that their place is checked too
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    kdim, vdim = options.get("kdim", 8), options.get("vdim", 8)
    q, k, v = torch.randn(3, 4, 8), torch.randn(3, 7, kdim), torch.randn(3, 7, vdim)
    if not options.get("batch_first"):
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    masks = {}
    if masked:
        padding = torch.zeros(3, 7, dtype=torch.bool)
        padding[:, -2:] = True
        masks = {"key_padding_mask": padding, "attn_mask": torch.rand(4, 7) > 0.7}
    fused = module(q, k, v, need_weights=False, **masks)[0]
    mode = WrittenOut()
    with mode:
        restated = module(q, k, v, need_weights=False, **masks)[0]
    assert mode.restated == 1
    torch.testing.assert_close(restated, fused, rtol=1e-5, atol=1e-6)


def test_unbatched_input_and_calls_it_cannot_restate():
    torch.manual_seed(0)
    module = nn.MultiheadAttention(8, 2).eval()
    x = torch.randn(5, 8)
    mode = WrittenOut()
    with mode:
        out = module(x, x, x)[0]
    torch.testing.assert_close(out, module(x, x, x)[0], rtol=1e-5, atol=1e-6)
    for odd in (
        nn.MultiheadAttention(8, 2, add_bias_kv=True),
        nn.MultiheadAttention(8, 2, add_zero_attn=True),
    ):
        mode = WrittenOut()
        with mode:
            odd.eval()(x, x, x)
        assert mode.restated == 0  # left to the fused call


def test_frozen_factors_freeze_multihead_attention_probabilities():
    """Replayed, the attention block is linear in its input (probabilities fixed at the recorded pass): the
    output on 2y is twice the output on y. Recomputed probabilities would not be."""
    torch.manual_seed(0)
    module = nn.MultiheadAttention(8, 2, batch_first=True, bias=False).eval()
    x, y = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    with FrozenFactors("record") as recorder:
        recorded = module(x, x, x, need_weights=False)[0]
    assert len(recorder.factors) == 1  # the probabilities, (3, 2, 5, 5)
    assert recorder.factors[0].shape == (3, 2, 5, 5)
    torch.testing.assert_close(recorded, module(x, x, x, need_weights=False)[0])
    with FrozenFactors("replay", list(recorder.factors)):
        once = module(y, y, y, need_weights=False)[0]
    with FrozenFactors("replay", list(recorder.factors)):
        twice = module(2 * y, 2 * y, 2 * y, need_weights=False)[0]
    torch.testing.assert_close(twice, 2 * once)
    assert not torch.allclose(module(2 * y, 2 * y, 2 * y)[0], 2 * module(y, y, y)[0])
