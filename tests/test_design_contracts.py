"""The contracts of ``shared/DESIGN.md`` (Public API, The callback, Data, The CLI), called exactly as written.

One small test per contract sentence, on tiny models, for every method name DESIGN lists where the
sentence applies. Exact published values are the conformance tests' business; here: names, arguments,
modes, the caller's model left as found, masked scoring, dtypes, the DataModule and CLI surface.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import trainer_kwargs, unchanged
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from px_lightning.pruning import apply_masks, compute_scores, find_masks, remove_masks, sparsity_report

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["px", "snip", "grasp", "synflow", "magnitude", "random", "ntksap"]
# Seeds make the two random methods comparable between calls; every other method is deterministic.
OPTIONS = {"random": {"seed": 0}, "ntksap": {"seed": 0}}
LOSS_METHODS = {"snip", "grasp"}


class Net(nn.Module):
    """Conv-BN-ReLU, global pooling, two Linears (150 prunable weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def net(seed: int = 0, stats: bool = True) -> Net:
    torch.manual_seed(seed)
    model = Net()
    if stats:  # BatchNorm statistics away from their 0/1 start, so train and eval modes differ
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(8, 3, 6, 6) * 2 + 1)
    return model


def batches(n: int = 2, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def scores_of(model, method, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_scores(model, method, data, **{**OPTIONS.get(str(method).lower(), {}), **kw})


def masks_of(model, method, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layer-collapse warnings on a 150-weight net are expected
        return find_masks(model, method, data, **{**OPTIONS.get(str(method).lower(), {}), **kw})


def assert_same_scores(a, b, rel=0.0):
    assert set(a) == set(b)
    for n in a:
        if rel == 0.0:
            assert torch.equal(a[n], b[n]), n
        else:
            scale = b[n].abs().max().clamp_min(1e-30)
            assert float((a[n].double() - b[n].double()).abs().max() / scale) <= rel, n


def random_masks(model, density: float, seed: int = 3):
    return masks_of(model, "random", (), density=density, seed=seed)


# --- Public API --------------------------------------------------------------------------------------------


def test_public_api_as_written():
    model = net()
    data = batches()
    scores = compute_scores(model, "px", data, loss_fn=None)
    assert set(scores) == {"conv.weight", "fc1.weight", "fc2.weight"}
    assert all(scores[n].shape == model.get_parameter(n).shape for n in scores)
    masks = masks_of(model, "px", data, density=0.018, rounds=100, scope="global")
    assert all(m.dtype == torch.bool and m.shape == model.get_parameter(n).shape for n, m in masks.items())
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) <= total - int((1 - 0.018) * total)
    assert apply_masks(model, masks) is model
    report = sparsity_report(model)
    assert report["total"] == total and report["kept"] == sum(int(m.sum()) for m in masks.values())
    assert {n: (v["kept"], v["total"]) for n, v in report["layers"].items()} == {
        n: (int(m.sum()), m.numel()) for n, m in masks.items()
    }
    remove_masks(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    for n, m in masks.items():
        assert bool((model.get_parameter(n)[~m] == 0).all()), n


def test_remove_masks_names_other_parametrizations_it_makes_permanent():
    model = net()
    torch.nn.utils.parametrizations.weight_norm(model.fc1)
    masks = random_masks(model, 0.5)
    apply_masks(model, masks)
    with pytest.warns(UserWarning, match=r"fc1\.weight.*_WeightNorm"):
        remove_masks(model)
    for n, m in masks.items():
        assert bool((model.get_parameter(n)[~m] == 0).all()), n


@pytest.mark.parametrize("method", METHODS)
def test_method_names_are_case_insensitive(method):
    model, data = net(), batches()
    lower = scores_of(model, method, data)
    for name in (method.upper(), method.capitalize(), {"grasp": "GraSP", "synflow": "SynFlow"}.get(method)):
        if name is not None:
            assert_same_scores(scores_of(model, name, data), lower)


@pytest.mark.parametrize("call", [compute_scores, find_masks])
def test_unknown_method_is_a_value_error_listing_every_known_one(call):
    with pytest.raises(ValueError) as err:
        call(net(), "pxx", batches())
    assert "pxx" in str(err.value)
    for method in METHODS:
        assert method in str(err.value)


@pytest.mark.parametrize("method", METHODS)
def test_a_scorer_object_is_accepted(method):
    from px_lightning.pruning.scorers import get_scorer

    model, data = net(), batches()
    by_name = scores_of(model, method, data)
    by_object = compute_scores(model, get_scorer(method, **OPTIONS.get(method, {})), data)
    assert_same_scores(by_object, by_name)


def test_method_options_as_keyword_arguments():
    model, data = net(), batches()
    scores = compute_scores(model, "ntksap", data, epsilon=0.01, repeats=1)
    assert set(scores) == {"conv.weight", "fc1.weight", "fc2.weight"}
    # An option reaches the scorer: a larger epsilon changes the scores of the same seeded draw.
    a = compute_scores(model, "ntksap", data, epsilon=0.01, repeats=1, seed=0)
    b = compute_scores(model, "ntksap", data, epsilon=0.5, repeats=1, seed=0)
    assert not torch.equal(a["fc1.weight"], b["fc1.weight"])
    masks = masks_of(model, "px", data, density=0.5, rounds=2, kernel_norm="train")
    assert set(masks) == set(scores)
    with pytest.raises(TypeError, match="bogus"):
        compute_scores(model, "px", data, bogus=1)


def _direct_snip(model, data, loss_fn, train: bool):
    copy_ = copy.deepcopy(model).train(train)
    names = ["conv.weight", "fc1.weight", "fc2.weight"]
    params = [copy_.get_parameter(n) for n in names]
    grads = [torch.zeros_like(p) for p in params]
    for x, y in data:
        for acc, g in zip(grads, torch.autograd.grad(loss_fn(copy_(x), y), params)):
            acc += g
    raw = {n: (g * p).abs().detach() for n, g, p in zip(names, grads, params)}
    total = sum(s.sum() for s in raw.values())
    return {n: s / total for n, s in raw.items()}


def test_loss_fn_serves_snip_and_grasp_and_defaults_to_cross_entropy():
    model, data = net(), batches()
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([5.0, 1.0, 0.2]))
    assert_same_scores(
        compute_scores(model, "snip", data, loss_fn=weighted), _direct_snip(model, data, weighted, True), 1e-5
    )
    assert_same_scores(
        compute_scores(model, "snip", data), _direct_snip(model, data, nn.CrossEntropyLoss(), True), 1e-5
    )
    default = compute_scores(model, "grasp", data)
    assert_same_scores(compute_scores(model, "grasp", data, loss_fn=nn.CrossEntropyLoss()), default)
    assert not torch.allclose(
        compute_scores(model, "grasp", data, loss_fn=weighted)["fc1.weight"], default["fc1.weight"]
    )


# --- batches ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_batches_as_pairs_lists_dataloader_or_bare_tensors(method):
    model, data = net(), batches()
    pairs = scores_of(model, method, data)
    assert_same_scores(scores_of(model, method, [list(b) for b in data]), pairs)
    loader = DataLoader(TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])), 4)
    assert_same_scores(scores_of(model, method, loader), pairs)
    if method in LOSS_METHODS:  # a loss needs targets: say so instead of failing inside torch
        with pytest.raises(ValueError, match="targets"):
            scores_of(model, method, [x for x, _ in data])
    else:
        assert_same_scores(scores_of(model, method, [x for x, _ in data]), pairs)


@pytest.mark.parametrize("method", METHODS)
def test_one_pass_iterables_serve_every_round(method):
    model, data = net(), batches()
    from_list = masks_of(model, method, data, density=0.3, rounds=2)
    from_generator = masks_of(model, method, (b for b in data), density=0.3, rounds=2)
    assert all(torch.equal(from_list[n], from_generator[n]) for n in from_list)


@pytest.mark.parametrize("method", METHODS)
def test_batches_follow_the_models_dtype(method):
    # Float32 data on a float64 model: moved to the model's device and floating dtype, targets kept integer.
    model = net().double()
    scores = scores_of(model, method, batches())
    assert all(s.dtype == torch.float64 and torch.isfinite(s).all() for s in scores.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to move batches to")
@pytest.mark.parametrize("method", METHODS)
def test_cpu_batches_are_moved_to_the_models_device(method):
    model = net().cuda()
    scores = scores_of(model, method, batches())
    assert all(s.device.type == "cuda" for s in scores.values())
    masks = masks_of(model, method, batches(), density=0.5, rounds=2)
    assert all(m.device.type == "cuda" for m in masks.values())


# --- prunable tensors ---------------------------------------------------------------------------------------


class AllLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 2, 1)
        self.c2 = nn.Conv2d(2, 2, 1)
        self.c3 = nn.Conv3d(2, 2, 1)
        self.up = nn.ConvTranspose2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.ln = nn.LayerNorm(2)
        self.emb = nn.Embedding(4, 2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x)


def test_default_prunable_tensors_and_include_exclude():
    model = AllLayers()
    expected = {"c1.weight", "c2.weight", "c3.weight", "fc.weight"}
    assert set(compute_scores(model, "magnitude")) == expected
    assert set(compute_scores(model, "magnitude", include=["c2", "fc.weight"])) == {"c2.weight", "fc.weight"}
    assert set(compute_scores(model, "magnitude", exclude=["c*"])) == {"fc.weight"}
    assert set(find_masks(model, "magnitude", density=0.5, exclude=["fc"])) == expected - {"fc.weight"}


def test_names_stay_plain_on_a_masked_model():
    model = net()
    apply_masks(model, random_masks(model, 0.5))
    assert set(compute_scores(model, "magnitude")) == {"conv.weight", "fc1.weight", "fc2.weight"}


# --- modes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_scores_do_not_depend_on_the_callers_mode(method):
    model, data = net(), batches()
    in_train = scores_of(model.train(), method, data)
    in_eval = scores_of(model.eval(), method, data)
    model.train()
    model.bn.eval()
    mixed = scores_of(model, method, data)
    assert_same_scores(in_eval, in_train, 1e-6)
    assert_same_scores(mixed, in_train, 1e-6)


def test_snip_and_grasp_score_in_train_mode():
    model, data = net().eval(), batches()
    loss = nn.CrossEntropyLoss()
    snip = compute_scores(model, "snip", data)
    assert_same_scores(snip, _direct_snip(model, data, loss, train=True), 1e-5)
    assert not torch.allclose(snip["fc1.weight"], _direct_snip(model, data, loss, train=False)["fc1.weight"])
    # GraSP: the same scores as on a model whose BatchNorm statistics are absent, which only train mode gives.
    no_stats = copy.deepcopy(model)
    no_stats.bn.reset_running_stats()
    assert_same_scores(
        compute_scores(no_stats.eval(), "grasp", data), compute_scores(model, "grasp", data), 1e-5
    )


def test_synflow_scores_in_eval_mode():
    model = net().train()
    copy_ = copy.deepcopy(model).eval().double()
    with torch.no_grad():
        for t in list(copy_.parameters()) + list(copy_.buffers()):
            if t.is_floating_point():
                t.abs_()
    copy_(torch.ones(1, 3, 6, 6, dtype=torch.float64)).sum().backward()
    direct = {
        n: (copy_.get_parameter(n).grad * copy_.get_parameter(n)).detach().abs().float()
        for n in ["conv.weight", "fc1.weight", "fc2.weight"]
    }
    assert_same_scores(compute_scores(model, "synflow", batches()), direct, 1e-6)


# --- the caller's model left exactly as found ---------------------------------------------------------------


def _calls(store):
    def hook(module, args, output=None):
        store.append(type(module).__name__)

    return hook


def _decorated_model():
    """BN statistics, a frozen tensor, some .grad set and some None, mixed modes, hooks, a weight_norm
    parametrization with a mask on top of it, and a plain mask."""
    model = net()
    F.cross_entropy(model(torch.randn(4, 3, 6, 6)), torch.tensor([0, 1, 2, 0])).backward()
    model.conv.weight.grad = None
    model.bn.bias.requires_grad_(False)
    model.fc2.weight.requires_grad_(False)  # a frozen prunable tensor: still scored, still frozen after
    torch.nn.utils.parametrizations.weight_norm(model.fc1)
    apply_masks(model, random_masks(model, 0.6))
    model.train()
    model.bn.eval()
    calls: list[str] = []
    handles = [
        model.fc2.register_forward_hook(_calls(calls)),
        model.conv.register_forward_pre_hook(_calls(calls)),
        model.register_forward_hook(_calls(calls)),
    ]
    return model, handles


@pytest.mark.parametrize("method", METHODS)
def test_compute_scores_and_find_masks_leave_the_model_exactly_as_found(method):
    model, _ = _decorated_model()
    with unchanged(model):
        scores = scores_of(model, method, batches())
    assert set(scores) == {"conv.weight", "fc1.weight", "fc2.weight"}
    with unchanged(model):
        masks_of(model, method, batches(), density=0.3, rounds=2)


@pytest.mark.parametrize("method", METHODS)
def test_scoring_works_when_the_caller_is_inside_no_grad(method):
    model, data = net(), batches()
    expected = scores_of(model, method, data)
    with torch.no_grad():
        assert_same_scores(scores_of(model, method, data), expected)
        masks_of(model, method, data, density=0.5, rounds=2)
        assert not torch.is_grad_enabled()


@pytest.mark.parametrize("method", METHODS)
def test_local_scope_keeps_the_density_in_every_layer(method):
    masks = masks_of(net(), method, batches(), density=0.5, rounds=1, scope="local")
    for n, m in masks.items():
        assert int(m.sum()) <= m.numel() - int(0.5 * m.numel()), n


# --- masked models -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_scoring_a_masked_model_sees_the_masked_network(method):
    model, data = net(), batches()
    masks = random_masks(model, 0.5)
    apply_masks(model, masks)  # the originals under the masks stay non-zero
    scores = scores_of(model, method, data)
    for n, m in masks.items():
        assert bool((scores[n][~m] == 0).all()), n
    if method in ("snip", "synflow", "magnitude"):
        # For these the masked network is the plain one with the pruned weights at zero.
        zeroed = net()
        with torch.no_grad():
            for n, m in masks.items():
                zeroed.get_parameter(n).mul_(m)
        assert_same_scores(scores, scores_of(zeroed, method, data), 1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_find_masks_continues_from_the_masks(method):
    model, data = net(), batches()
    first = random_masks(model, 0.9)
    apply_masks(model, first)
    second = masks_of(model, method, data, density=0.5, rounds=1)
    for n in first:
        assert not bool((second[n] & ~first[n]).any()), n  # a pruned weight never comes back
    total = sum(m.numel() for m in first.values())
    kept = sum(int(m.sum()) for m in second.values())
    budget = total - int(0.5 * total)
    # GraSP's signed scores once ranked pruned zeros above kept negatives: the budget stays exact.
    assert kept == budget if method in ("grasp", "magnitude", "random", "snip", "synflow") else kept <= budget


# --- float32 and float64 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["px", "snip", "grasp", "synflow", "magnitude", "random"])
def test_float32_and_float64_models_agree(method):
    model, data = net(), batches()
    s32 = scores_of(model, method, data)
    s64 = scores_of(copy.deepcopy(model).double(), method, [(x.double(), y) for x, y in data])
    assert all(s.dtype == torch.float32 for s in s32.values())
    assert all(s.dtype == torch.float64 for s in s64.values())
    assert_same_scores(s32, s64, 1e-4)


def test_ntksap_runs_on_float64():
    scores = scores_of(net().double(), "ntksap", batches(), epsilon=0.01, repeats=1)
    assert all(s.dtype == torch.float64 and bool(s.any()) for s in scores.values())


# --- PX activations -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "act",
    [
        nn.GELU(),
        nn.SiLU(),
        nn.LeakyReLU(),
        nn.ELU(),
        nn.ReLU6(),
        nn.Mish(),
        nn.Tanh(),
        nn.Sigmoid(),
        nn.Hardsigmoid(inplace=True),
        nn.Softsign(),
    ],
)
def test_px_treats_other_activations_like_relu(act):
    # One hidden layer: the gate pre-activation > 0 is the same whatever the activation.
    def mlp(a):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 7), a, nn.Linear(7, 3))

    data = [torch.randn(4, 5, generator=torch.Generator().manual_seed(2))]
    assert_same_scores(compute_scores(mlp(act), "px", data), compute_scores(mlp(nn.ReLU()), "px", data), 1e-6)


# --- Data ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "downloadable"),
    [
        ("CIFAR10DataModule", True),
        ("CIFAR100DataModule", True),
        ("TinyImageNetDataModule", True),
        ("ImageNetDataModule", False),
        ("VOCSegmentationDataModule", True),
        ("DigitsDataModule", False),
    ],
)
def test_every_datamodule_takes_the_common_arguments(name, downloadable):
    from px_lightning import data

    cls = getattr(data, name)
    params = inspect.signature(cls.__init__).parameters
    for arg in ("data_dir", "batch_size", "num_workers", "examples_per_class"):
        assert arg in params, f"{name} lacks {arg}"
    assert ("download" in params) == downloadable
    assert callable(getattr(cls, "scoring_dataloader", None))


def test_digits_scoring_dataloader_is_a_balanced_subset(tmp_path):
    from px_lightning.data import DigitsDataModule

    dm = DigitsDataModule(data_dir=tmp_path, batch_size=8, num_workers=0, examples_per_class=2)
    labels = torch.cat([y for _, y in dm.scoring_dataloader()])
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 2))
    assert not any(tmp_path.iterdir())  # nothing written: the digits ship with scikit-learn


# --- The callback -------------------------------------------------------------------------------------------


def test_callback_as_written_and_load_from_checkpoint_gives_the_pruned_model(tmp_path):
    from px_lightning import ForesightPruningCallback, ImageClassifier
    from px_lightning.data import DigitsDataModule
    from px_lightning.pruning import get_masks

    L.seed_everything(0)
    model = ImageClassifier(model="small_cnn", num_classes=10)
    dm = DigitsDataModule(batch_size=16, examples_per_class=1)
    trainer = L.Trainer(
        callbacks=[ForesightPruningCallback(method="px", density=0.018, rounds=100)],
        **trainer_kwargs(tmp_path, max_steps=1, limit_val_batches=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    masks = get_masks(model)
    assert masks and any(".parametrizations." in k and k.endswith(".mask") for k in model.state_dict())
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) <= total - int((1 - 0.018) * total)
    ckpt = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = ImageClassifier.load_from_checkpoint(ckpt)
    for n, m in masks.items():
        assert bool((loaded.get_parameter(n)[~m] == 0).all()), n
    x = next(iter(dm.scoring_dataloader()))[0]
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# --- The CLI ------------------------------------------------------------------------------------------------


def test_cli_entry_point_and_configs():
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="px-lightning")
    assert script.value == "px_lightning.cli:main"
    for config in ("configs/cifar10/resnet20_px.yaml", "configs/quickstart.yaml"):
        assert (ROOT / config).is_file(), config


def test_cli_subcommands(capsys, monkeypatch):
    from px_lightning.cli import cli_main

    monkeypatch.setattr("sys.argv", ["px-lightning"])  # pytest's own arguments are not the CLI's

    with pytest.raises(SystemExit) as done:
        cli_main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out


def test_cli_predict_runs_on_the_quickstart_config(tmp_path, monkeypatch):
    from px_lightning.cli import cli_main

    monkeypatch.setattr("sys.argv", ["px-lightning"])
    monkeypatch.chdir(tmp_path)
    args = ["predict", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--trainer.logger=false"]
    args += ["--trainer.limit_predict_batches=2", "--trainer.enable_progress_bar=false"]
    cli = cli_main(args)
    predictions = cli.trainer.predict_loop.predictions
    assert len(predictions) == 2 and all(p.shape == (32,) and p.max() < 10 for p in predictions)
