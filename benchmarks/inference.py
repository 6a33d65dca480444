"""CPU inference of a dense torchvision ResNet against the same network pruned and run sparse.

For each density the network (``weights=None``, seeded) gets masks from ``find_masks`` (magnitude, one
shot by default) and runs three ways at batch 1 and batch 64 (by default):
- ``dense``: the unpruned network;
- ``masked``: the pruned network as training leaves it (parametrized masks, dense kernels);
- ``csr``: every convolution and linear layer as a CSR sparse matrix product (``torch.sparse.mm``): a
  linear layer directly, a convolution lowered to a matrix product (``F.unfold``, or a reshape for a
  1x1 stride-1 convolution), its weight ``[out, in * kh * kw]`` in CSR.
The CSR network's outputs are checked against the masked network's. It also writes the dense
``state_dict`` and ``save_sparse`` files and reports their sizes, and ``savings_report``'s FLOPs ratio.

Timing: median over ``--repeats`` calls after one warm-up, wall time and process CPU time (with one
thread the CPU time counts the process's own work, which matters on a shared machine).

Example:
    python benchmarks/inference.py --image-size 64 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from px_lightning.pruning import apply_masks, find_masks
from px_lightning.pruning.savings import savings_report
from px_lightning.pruning.sparse_io import save_sparse


class CSRLinear(nn.Module):
    """``x @ W.T + b`` with ``W`` (masked) in CSR."""

    def __init__(self, linear: nn.Linear, mask: torch.Tensor) -> None:
        super().__init__()
        self.weight = (linear.weight.detach() * mask).to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.sparse.mm(self.weight, flat.T).T
        out = out if self.bias is None else out + self.bias
        return out.reshape(*x.shape[:-1], -1)


class CSRConv2d(nn.Module):
    """A ``groups=1`` Conv2d as ``W_csr [out, in*kh*kw] @ unfold(x) [in*kh*kw, batch*positions]``."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__()
        weight = conv.weight.detach() * mask
        self.out_channels = weight.shape[0]
        self.weight = weight.reshape(self.out_channels, -1).to_sparse_csr()
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        kh, kw = self.kernel_size
        oh = (x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if (kh, kw) == (1, 1) and self.padding == (0, 0):
            # A 1x1 convolution needs no unfold: the (strided) input is already the column matrix.
            cols = x[:, :, :: self.stride[0], :: self.stride[1]].transpose(0, 1).reshape(x.shape[1], -1)
        else:
            unfolded = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
            cols = unfolded.transpose(0, 1).reshape(unfolded.shape[1], -1)
        out = torch.sparse.mm(self.weight, cols).reshape(self.out_channels, b, oh, ow).transpose(0, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def csr_network(dense: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the plain network ``dense`` with each masked Conv2d (groups 1) and Linear run in CSR."""
    net = copy.deepcopy(dense).eval()
    for name, mask in masks.items():
        module_name = name.rpartition(".")[0]
        module = net.get_submodule(module_name)
        if isinstance(module, nn.Linear):
            replacement = CSRLinear(module, mask)
        elif isinstance(module, nn.Conv2d) and module.groups == 1:
            replacement = CSRConv2d(module, mask)
        else:
            continue
        parent, _, attr = module_name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, replacement)
    return net


def time_forward(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median wall and CPU milliseconds of ``model(x)`` over ``repeats`` calls after one warm-up."""
    walls, cpus = [], []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            model(x)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
    return {"wall_ms": 1e3 * statistics.median(walls), "cpu_ms": 1e3 * statistics.median(cpus)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet50", help="a torchvision.models constructor name")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.018])
    parser.add_argument("--method", default="magnitude")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.manual_seed(0)
    dense = getattr(torchvision.models, args.arch)(weights=None).eval()
    inputs = {b: torch.randn(b, 3, args.image_size, args.image_size) for b in args.batches}
    results = {"arch": args.arch, "image_size": args.image_size, "threads": args.threads, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        dense_file = Path(tmp) / "dense.pt"
        torch.save(dense.state_dict(), dense_file)
        results["dense_file_bytes"] = dense_file.stat().st_size
        for b, x in inputs.items():
            results["runs"].append(
                {"density": 1.0, "batch": b, "variant": "dense", **time_forward(dense, x, args.repeats)}
            )
            print(json.dumps(results["runs"][-1]), flush=True)
        results["densities"] = {}
        for density in args.densities:
            masked = copy.deepcopy(dense)
            masks = find_masks(masked, args.method, density=density)
            apply_masks(masked, masks)
            sparse_file = Path(tmp) / f"sparse_{density}.pt"
            save_sparse(masked, sparse_file)
            report = savings_report(masked, inputs[args.batches[0]][:1], effective=False)
            csr = csr_network(dense, masks)
            check = inputs[args.batches[0]]
            with torch.inference_mode():
                expected, got = masked(check), csr(check)
            error = float((expected - got).abs().max() / expected.abs().max().clamp_min(1e-12))
            results["densities"][str(density)] = {
                "sparse_file_bytes": sparse_file.stat().st_size,
                "file_ratio": sparse_file.stat().st_size / results["dense_file_bytes"],
                "flops_ratio": report["flops_ratio"],
                "params_ratio": report["params_ratio"],
                "csr_vs_masked_max_relative_error": error,
            }
            print(json.dumps({"density": density, **results["densities"][str(density)]}), flush=True)
            for b, x in inputs.items():
                for variant, net in (("masked", masked), ("csr", csr)):
                    run = {
                        "density": density,
                        "batch": b,
                        "variant": variant,
                        **time_forward(net, x, args.repeats),
                    }
                    results["runs"].append(run)
                    print(json.dumps(run), flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
