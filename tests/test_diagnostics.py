"""The empirical NTK against a brute-force Jacobian, its behaviour on masked networks, and the TensorBoard
diagnostics callback in a real fit, read back from the real event file."""

import lightning as L
import pytest
import torch
from helpers import trainer_kwargs, unchanged
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from px_lightning.callbacks import ForesightPruningCallback, PruningDiagnosticsCallback
from px_lightning.data import DigitsDataModule
from px_lightning.diagnostics import compare_spectra, empirical_ntk, ntk_spectrum, spectrum
from px_lightning.models.small_cnn import SmallCNN
from px_lightning.modules import ImageClassifier
from px_lightning.pruning import apply_masks, compute_scores, find_masks, get_masks


def tiny_mlp(bias=True, seed=0, second_activation=nn.Tanh):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 6, bias=bias),
        nn.ReLU(),
        nn.Linear(6, 5, bias=bias),
        second_activation(),
        nn.Linear(5, 3, bias=bias),
    ).double()


def brute_force_ntk(model, x, masks=None):
    """J J^T with J built one output at a time by autograd.grad (no torch.func)."""
    masks = masks or {}
    params = dict(model.named_parameters())
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])[0]
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], list(params.values()), retain_graph=True)
            rows.append(
                torch.cat([(g * masks[n] if n in masks else g).reshape(-1) for n, g in zip(params, grads)])
            )
    jac = torch.stack(rows)
    return jac @ jac.T


@pytest.mark.parametrize("chunk_size", [1, 3, 16])
def test_ntk_matches_brute_force_jacobian(chunk_size):
    model = tiny_mlp()
    x = torch.randn(7, 4, dtype=torch.float64)
    ref = brute_force_ntk(model, x)
    kernel = empirical_ntk(model, x, chunk_size=chunk_size)
    assert kernel.shape == (21, 21)
    assert torch.allclose(kernel, ref, rtol=1e-10, atol=1e-12)
    ours, theirs = spectrum(kernel, top_k=5), torch.linalg.eigvalsh(ref).flip(0)
    assert abs(ours.trace - float(ref.trace())) <= 1e-5 * abs(float(ref.trace()))
    assert torch.allclose(ours.top, theirs[:5], rtol=1e-5)
    # Summing over outputs keeps the trace and gives the (N, N) kernel.
    reduced = empirical_ntk(model, x, chunk_size=chunk_size, reduce_outputs=True)
    assert torch.allclose(reduced, ref.view(7, 3, 7, 3).diagonal(dim1=1, dim2=3).sum(-1), rtol=1e-10)


def test_float32_model_agrees_to_1e_5():
    model = tiny_mlp()
    x = torch.randn(6, 4, dtype=torch.float64)
    ref = spectrum(brute_force_ntk(model, x), top_k=4)
    got = ntk_spectrum(model.float(), x.float(), top_k=4, chunk_size=4)
    assert abs(got.trace - ref.trace) <= 1e-5 * ref.trace
    assert torch.allclose(got.top, ref.top, rtol=1e-5)


def test_masked_ntk_matches_brute_force_and_model_is_untouched():
    model = tiny_mlp()
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.manual_seed(1)
    masks = {n: torch.rand_like(p) > 0.5 for n, p in model.named_parameters() if n.endswith("weight")}
    plain = tiny_mlp()
    with torch.no_grad():
        for n, p in plain.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    ref = brute_force_ntk(plain, x, masks)
    apply_masks(model, masks)
    model.train()
    with unchanged(model):  # weights, masks and the training mode as they were
        assert torch.allclose(empirical_ntk(model, x), ref, rtol=1e-10, atol=1e-12)  # installed masks
    assert model.training
    # dense=True: the same weights without masks.
    assert torch.allclose(empirical_ntk(model, x, dense=True), brute_force_ntk(tiny_mlp(), x), rtol=1e-10)
    # masks given for a plain model: the same kernel as installing them.
    assert torch.allclose(empirical_ntk(tiny_mlp(), x, masks=masks), ref, rtol=1e-10, atol=1e-12)


def test_single_path_gives_the_expected_trace():
    # Input 2 -> hidden 4 -> hidden 1 -> output 0: f_0(x) = w3 * w2 * w1 * x_2 where x_2 > 0 (ReLU gates),
    # else 0. The trace sums, over samples, the squared derivatives with respect to the three kept weights.
    model = tiny_mlp(bias=False, second_activation=nn.ReLU)
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    masks["0.weight"][4, 2] = masks["2.weight"][1, 4] = masks["4.weight"][0, 1] = True
    with torch.no_grad():  # positive weights: the path is open for every sample with x_2 > 0
        model[0].weight[4, 2], model[2].weight[1, 4], model[4].weight[0, 1] = 0.7, 1.3, 2.1
    w1, w2, w3 = 0.7, 1.3, 2.1
    x = torch.randn(9, 4, dtype=torch.float64)
    open_ = (x[:, 2] > 0).double()
    expected = float((open_ * x[:, 2] ** 2).sum()) * ((w2 * w3) ** 2 + (w1 * w3) ** 2 + (w1 * w2) ** 2)
    got = ntk_spectrum(model, x, masks=masks, chunk_size=4)
    assert abs(got.trace - expected) <= 1e-10 * expected
    # One path: the kernel has rank one, its only nonzero eigenvalue is the trace.
    assert abs(float(got.top[0]) - expected) <= 1e-10 * expected
    assert float(got.top[1:].abs().max()) <= 1e-10 * expected


def test_compare_spectra_on_pruned_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    x = torch.randn(6, 3, 8, 8)
    masks = find_masks(model, "random", density=0.3, seed=0)
    report = compare_spectra(model, x, masks, top_k=3, chunk_size=4)
    assert 0 < report["trace_ratio"] < 1
    assert report["top_ratio"].shape == (3,)
    assert -1 <= report["alignment"] <= 1 + 1e-9
    full = compare_spectra(model, x, {n: torch.ones_like(m) for n, m in masks.items()}, chunk_size=4)
    assert full["trace_ratio"] == pytest.approx(1.0, rel=1e-12)
    assert full["alignment"] == pytest.approx(1.0, rel=1e-12)
    apply_masks(model, masks)
    assert compare_spectra(model, x, chunk_size=4)["trace_ratio"] == pytest.approx(report["trace_ratio"])
    assert set(get_masks(model)) == set(masks)


def test_bad_arguments_are_named():
    model = tiny_mlp()
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="chunk_size"):
        empirical_ntk(model, x, chunk_size=0)
    with pytest.raises(ValueError, match="params"):
        empirical_ntk(model, x, params="weights")
    with pytest.raises(ValueError, match="masks names"):
        empirical_ntk(model, x, masks={"nope.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        empirical_ntk(model, x, masks={"0.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no masks"):
        compare_spectra(model, x)
    with pytest.raises(ValueError, match="dense=True"):
        empirical_ntk(model, x, masks={}, dense=True)


# -- PruningDiagnosticsCallback ---------------------------------------------------------------------


def events(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def fit(tmp_path, diagnostics, max_epochs=1, pruning=True):
    torch.manual_seed(0)
    module = ImageClassifier(SmallCNN(10, widths=(4, 8)), num_classes=10)
    callbacks = [diagnostics]  # before the pruning callback: it must still see the pruned network
    if pruning:
        callbacks.append(ForesightPruningCallback("px", density=0.2, rounds=2, verbose=False))
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    trainer = L.Trainer(
        callbacks=callbacks,
        **trainer_kwargs(
            tmp_path,
            max_epochs=max_epochs,
            max_steps=-1,
            limit_train_batches=2,
            limit_val_batches=0,
            logger=logger,
        ),
    )
    dense = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, examples_per_class=2))
    return module, logger.log_dir, dense


def test_logs_density_scores_and_ntk_to_a_real_event_file(tmp_path):
    diag = PruningDiagnosticsCallback(every_n_epochs=1, num_samples=6, top_k=3, chunk_size=3)
    module, log_dir, dense = fit(tmp_path, diag, max_epochs=2)
    acc = events(log_dir)
    tags = acc.Tags()
    assert "diagnostics/layer_density" in tags["images"] and "ntk/spectrum" in tags["images"]
    # Logged at train start (step 0) and after each of the two epochs (steps 2 and 4).
    assert [e.step for e in acc.Scalars("diagnostics/density")] == [0, 2, 4]
    density = acc.Scalars("diagnostics/density")[0].value
    masks = get_masks(module)
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert density == pytest.approx(kept, rel=1e-6) and density < 0.25
    hist = [t for t in tags["histograms"] if t.startswith("diagnostics/scores/")]
    assert "diagnostics/scores/all" in hist and "diagnostics/scores/model.fc.weight" in hist
    # The first NTK record compares the pruned network with the dense one at initialisation, on the first
    # inputs of the datamodule's scoring_dataloader() (the pruning callback's scoring data).
    x = next(iter(DigitsDataModule(batch_size=32, examples_per_class=2).scoring_dataloader()))[0][:6]
    assert torch.equal(diag._ntk_inputs, x)
    masked0 = acc.Scalars("ntk/masked_trace")[0].value
    dense0 = acc.Scalars("ntk/dense_trace")[0].value
    plain_dense = ImageClassifier(SmallCNN(10, widths=(4, 8)), num_classes=10)
    plain_dense.load_state_dict(dense)
    expected_dense = spectrum(empirical_ntk(plain_dense, x)).trace
    assert dense0 == pytest.approx(expected_dense, rel=1e-4)
    assert acc.Scalars("ntk/trace_ratio")[0].value == pytest.approx(masked0 / dense0, rel=1e-5)
    assert 0 < masked0 < dense0
    # The dense reference stays the same; the masked kernel changes as the sparse network trains.
    assert len({round(e.value, 3) for e in acc.Scalars("ntk/dense_trace")}) == 1
    assert acc.Scalars("ntk/masked_trace")[-1].value != pytest.approx(masked0, rel=1e-6)
    assert len(acc.Scalars("ntk/top_eig_ratio/2")) == 3


def test_refuses_a_trainer_without_tensorboard_or_masks(tmp_path):
    module = ImageClassifier(SmallCNN(10, widths=(4, 8)), num_classes=10)
    trainer = L.Trainer(
        callbacks=[PruningDiagnosticsCallback(log_scores=False)],
        **trainer_kwargs(tmp_path, max_epochs=1, max_steps=-1),
    )
    with pytest.raises(ValueError, match="TensorBoardLogger"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    with pytest.raises(ValueError, match="ForesightPruningCallback"):
        fit(tmp_path, PruningDiagnosticsCallback(), pruning=False)
    with pytest.raises(RuntimeError, match="no pruning masks"):
        fit(tmp_path, PruningDiagnosticsCallback(log_scores=False), pruning=False)
    with pytest.raises(ValueError, match="every_n_epochs"):
        PruningDiagnosticsCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_batches"):
        PruningDiagnosticsCallback(num_batches=0)


class TinySegmenter(L.LightningModule):
    """Per-pixel logits and a loss that ignores label 255, like SemanticSegmenter (whose DeepLabV3+ is too
    slow for this test)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=255)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ExpectedScores(L.Callback):
    """At training start (after the diagnostics callback, before any step): SNIP scores of the masked
    module with its own loss on the given batches, computed by the algorithm layer."""

    def __init__(self, batches):
        self.batches = batches

    def on_train_start(self, trainer, pl_module):
        masks = get_masks(pl_module)
        self.masks = {n: m.clone() for n, m in masks.items()}
        self.scores = {
            key: compute_scores(pl_module, "snip", b, loss_fn=pl_module.loss_fn, include=list(masks))
            for key, b in self.batches.items()
        }


def _log10_kept(scores, masks):
    kept = torch.cat([s[masks[n]].double() for n, s in scores.items()])
    return kept[kept > 0].log10()


def test_scores_use_the_module_loss_and_the_pruning_data_and_keep_the_backend(tmp_path):
    import matplotlib

    # Segmentation-like targets: label 255 (void) in every batch, which a default cross-entropy rejects.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (16, 8, 8), generator=g)
    y[:, 0, :] = 255
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    batches = list(loader)
    expected = ExpectedScores({"first2": batches[:2], "all": batches})
    module = TinySegmenter()
    trainer = L.Trainer(
        callbacks=[
            PruningDiagnosticsCallback(log_ntk=False),
            ForesightPruningCallback("snip", density=0.3, num_batches=2, verbose=False),
            expected,
        ],
        **trainer_kwargs(
            tmp_path, max_steps=1, logger=TensorBoardLogger(tmp_path, name="seg", default_hp_metric=False)
        ),
    )
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's non-Agg backend: the callback must leave it alone
    try:
        trainer.fit(module, train_dataloaders=loader)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    acc = events(trainer.logger.log_dir)
    assert "diagnostics/layer_density" in acc.Tags()["images"]
    hist = acc.Histograms("diagnostics/scores/all")[0].histogram_value
    # The pruning callback's data: the first num_batches=2 train batches (no scoring_dataloader here).
    want = _log10_kept(expected.scores["first2"], expected.masks)
    other = _log10_kept(expected.scores["all"], expected.masks)
    assert hist.num == want.numel()
    assert hist.sum == pytest.approx(float(want.sum()), rel=1e-6)
    assert abs(float(other.sum()) - float(want.sum())) > 1e-3 * abs(float(want.sum()))
