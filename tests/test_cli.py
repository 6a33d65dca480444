"""The ``px-lightning`` command line: every config parses and trains one step, the README's commands work.

Every YAML under ``configs/`` is run with ``--print_config`` and with ``fit --trainer.fast_dev_run=1`` on tiny
copies of its dataset in the real on-disk format (so no config can rot); the quickstart command is run
exactly as README.md writes it, in a subprocess through the installed console script; bad configs fail with
LightningCLI's usual error or the DataModule's message.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.cli import cli_main, main
from px_lightning.pruning import get_masks, sparsity_report
from px_lightning.pruning.scorers import get_scorer

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
README = REPO / "README.md"
sys.path.insert(0, str(Path(__file__).resolve().parent))

ALL_CONFIGS = sorted(str(p.relative_to(REPO)) for p in CONFIG_DIR.rglob("*.yaml"))
PUBLISHED = [
    "configs/cifar10/resnet20_px.yaml",
    "configs/cifar100/vgg16_bn_px.yaml",
    "configs/tiny_imagenet/resnet18_px.yaml",
    "configs/imagenet/resnet50_px.yaml",
    "configs/voc2012/deeplabv3plus_resnet50_px.yaml",
]

# What makes each config cheap enough for one CPU step: tiny data, one PX round, no workers, 32-bit
# precision (the configs ask for fp16 mixed precision, meant for GPUs). Batches of 32 keep the number of
# scoring batches (one forward per batch and scoring copy) small.
COMMON = [
    "--trainer.fast_dev_run=1",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
    "--trainer.enable_progress_bar=false",
    "--trainer.callbacks.init_args.rounds=1",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=32",
]
FAST_DEV_RUN = {
    "configs/quickstart.yaml": [],
    "configs/cifar10/resnet20_px.yaml": [
        "--data.init_args.download=false",
        "--data.init_args.examples_per_class=1",
    ],
    "configs/cifar100/vgg16_bn_px.yaml": [
        "--data.init_args.download=false",
        "--data.init_args.examples_per_class=1",
    ],
    # 200 classes make at least 200 scoring images: PX on a 64x64 ResNet-18 over them takes minutes on the
    # CPU, so this one prunes by magnitude (data-free); PX runs on the other configs' real scoring data.
    "configs/tiny_imagenet/resnet18_px.yaml": [
        "--data.init_args.download=false",
        "--data.init_args.examples_per_class=1",
        "--trainer.callbacks.init_args.method=magnitude",
    ],
    "configs/imagenet/resnet50_px.yaml": [
        "--data.init_args.examples_per_class=1",
        "--data.init_args.batch_size=4",
        "--model.init_args.num_classes=3",  # the tiny copy has 3 class folders; the module checks the count
    ],
    "configs/voc2012/deeplabv3plus_resnet50_px.yaml": [
        "--data.init_args.download=false",
        "--data.init_args.batch_size=2",
        "--data.init_args.crop_size=64",
        "--data.init_args.scoring_batches=1",
    ],
}


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # LightningCLI warns when both `args` and command-line arguments (pytest's) are present.
    monkeypatch.setattr(sys, "argv", ["px-lightning"])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, list[str]]:
    """Tiny copies of every dataset in its real format: config name -> the extra CLI overrides pointing at them."""
    from tiny_classification_data import write_cifar10, write_cifar100, write_imagenet, write_tiny_imagenet
    from tiny_voc_data import write_voc

    root = tmp_path_factory.mktemp("tiny_data")
    dirs = {
        "configs/cifar10/resnet20_px.yaml": write_cifar10(root / "cifar10"),
        "configs/cifar100/vgg16_bn_px.yaml": write_cifar100(root / "cifar100"),
        "configs/tiny_imagenet/resnet18_px.yaml": write_tiny_imagenet(root / "tiny_imagenet"),
        "configs/imagenet/resnet50_px.yaml": write_imagenet(root / "imagenet"),
        "configs/voc2012/deeplabv3plus_resnet50_px.yaml": write_voc(root / "voc"),
    }
    extra = {name: [f"--data.init_args.data_dir={d}"] for name, d in dirs.items()}
    # A DINO-format file (a plain torchvision ResNet-50 state dict without fc) of random weights, so the
    # VOC config's pre-trained path is exercised without downloading anything.
    import torchvision

    dino = root / "dino_resnet50.pth"
    state = {
        k: v
        for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
        if not k.startswith("fc.")
    }
    torch.save(state, dino)
    extra["configs/voc2012/deeplabv3plus_resnet50_px.yaml"].append(f"--model.init_args.pretrained={dino}")
    extra["configs/quickstart.yaml"] = []
    return extra


def _load(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _pruning_callback(config: dict) -> dict:
    callbacks = config["trainer"]["callbacks"]
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return callbacks[-1]


def _same_class(a: str, b: str) -> bool:
    def resolve(path: str):
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    return resolve(a) is resolve(b)


def _assert_contains(printed, written, where: str = "") -> None:
    """Every value the config file writes is in the printed (resolved) config."""
    if isinstance(written, dict):
        assert isinstance(printed, dict), f"{where}: expected a mapping, printed {printed!r}"
        for key, value in written.items():
            assert key in printed, f"{where}.{key} missing from the printed config"
            if key == "class_path":
                assert _same_class(printed[key], value), f"{where}.class_path: {printed[key]} != {value}"
            else:
                _assert_contains(printed[key], value, f"{where}.{key}")
    elif isinstance(written, list) and written and isinstance(written[0], dict):
        assert len(printed) == len(written), f"{where}: {printed!r} != {written!r}"
        for i, (p, w) in enumerate(zip(printed, written)):
            _assert_contains(p, w, f"{where}[{i}]")
    else:
        assert printed == written, f"{where}: printed {printed!r}, the file says {written!r}"


def _print_config(args: list[str], capsys) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err
    return yaml.safe_load(out.out)


def test_every_config_is_tested_and_published_ones_are_there():
    assert set(ALL_CONFIGS) == set(FAST_DEV_RUN), (
        "a config without a fast_dev_run case (add it to FAST_DEV_RUN)"
    )
    for name in PUBLISHED:
        callback = _pruning_callback(_load(REPO / name))
        assert callback["class_path"].endswith("ForesightPruningCallback")
        args = callback["init_args"]
        # PX at 0.018 with PX's own 100 rounds: `rounds` is left to the method, so `method=snip` is one-shot.
        assert (args["method"], args["density"], args.get("rounds")) == ("px", 0.018, None), name
        assert get_scorer("px").default_rounds == 100
        # The PX scoring is stated, not taken from the callback's defaults: the paper's own computation.
        assert args["method_options"] == {"px": {"variant": "cvpr2024"}}, name


@pytest.mark.parametrize("config", PUBLISHED)
def test_method_override_gives_the_methods_own_rounds_and_options(config, capsys):
    # The README's one override: SNIP one-shot with its own (no) options, not 100-round SNIP with PX's.
    printed = _print_config(
        ["fit", "--config", str(REPO / config), "--trainer.callbacks.init_args.method=snip"], capsys
    )
    callback = ForesightPruningCallback(**_pruning_callback(printed)["init_args"])
    assert callback.scorer.name == "snip" and callback.rounds is None and callback.method_options == {}
    assert callback.scorer.default_rounds == 1
    px = ForesightPruningCallback(
        **_pruning_callback(_print_config(["fit", "--config", str(REPO / config)], capsys))["init_args"]
    )
    assert px.scorer.name == "px" and px.scorer.default_rounds == 100 and px.scorer.variant == "cvpr2024"


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_print_config(config, capsys):
    printed = _print_config(["fit", "--config", str(REPO / config)], capsys)
    _assert_contains(printed, _load(REPO / config))


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_fast_dev_run(config, tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # logs and the saved config.yaml land here
    cli = cli_main(
        ["fit", "--config", str(REPO / config), *COMMON, *FAST_DEV_RUN[config], *tiny_data[config]]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    # The callback was configured from the YAML: the masks are on the model at the config's density.
    density = _pruning_callback(_load(REPO / config))["init_args"]["density"]
    assert get_masks(cli.model), "no masks on the trained model"
    assert sparsity_report(cli.model)["density"] == pytest.approx(density, abs=2e-3)
    out = capsys.readouterr().out
    if _load(REPO / config).get("test_after_fit"):
        assert cli.trainer.state.fn == "test"
        assert "Per-layer density (masks)" in out


def _readme_commands() -> list[str]:
    """Every `px-lightning ...` command in README.md's code blocks (after a leading `... &&`)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("&&")[-1].strip()
            if line.startswith("px-lightning "):
                commands.append(line)
    return commands


def _lookup(config, dotted: str):
    node = config
    for key in dotted.split("."):
        if isinstance(node, list):  # `--trainer.callbacks.init_args.x` edits the last callback
            node = node[-1]
        node = node[key]
    return node


def test_readme_commands_parse(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    commands = _readme_commands()
    assert any("configs/quickstart.yaml" in c for c in commands)
    assert any("--trainer.callbacks.init_args.method=snip" in c for c in commands)
    assert any("--trainer.num_nodes=2" in c for c in commands)
    for command in commands:
        argv = shlex.split(command)[1:]
        printed = _print_config(argv, capsys)
        for arg in argv:
            match = re.fullmatch(r"--([\w.]+)=(.*)", arg)
            if match:
                key, value = match.groups()
                # str(): Trainer's devices takes "8" and 8 alike, and LightningCLI keeps the string.
                assert str(_lookup(printed, key)) == str(yaml.safe_load(value)), f"{command}: {key}"


def test_quickstart_command_from_readme(tmp_path):
    """The README's quickstart command, verbatim (all 10 epochs), through the installed console script."""
    command = next(
        c for c in _readme_commands() if c.startswith("px-lightning fit --config configs/quickstart.yaml")
    )
    (tmp_path / "configs").symlink_to(CONFIG_DIR)  # the command's relative path, with logs kept in tmp_path
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(
        shlex.split(command),
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # about 20 s on two idle cores; 5 min measured while other jobs loaded the machine
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    out = run.stdout + run.stderr
    accuracy = re.search(r"test/acc\s*│?\s*([0-9.]+)", out)
    assert accuracy, f"no test accuracy in the output:\n{out[-3000:]}"
    # About 0.97 measured (README); 10 classes make chance 0.1. The margin absorbs mask changes from float
    # round-off across machines and thread counts.
    assert float(accuracy.group(1)) >= 0.9
    # It ends with the per-layer density table of the trained model, at the config's density.
    table = out[out.rindex("Per-layer density") :]
    total = re.search(r"^total\s+(\d+)\s+(\d+)\s+([0-9.]+)$", table, flags=re.MULTILINE)
    density = _pruning_callback(_load(CONFIG_DIR / "quickstart.yaml"))["init_args"]["density"]
    assert total and float(total.group(3)) == pytest.approx(density, abs=2e-3), table
    assert len(table.strip().splitlines()) >= 5  # header lines, one row per pruned layer, total
    # What the masks save, under the last table: a FLOPs ratio well below 1 at density 0.05.
    flops = re.search(r"FLOPs/example: .* \(ratio ([0-9.e-]+)\)", table)
    assert flops and 0 < float(flops.group(1)) < 0.5, table
    # TensorBoard event files with the pruning densities.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    tags = set()
    for event in events:
        acc = EventAccumulator(str(event))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"pruning/density", "pruning/flops_ratio", "pruning/params_ratio"} <= tags, sorted(tags)


def test_readme_callback_snippet(tmp_path, monkeypatch):
    """The README's five lines of Python run as written (one epoch instead of five, no progress bar)."""
    # The first Python block of its section (other sections have Python blocks of their own).
    section = README.read_text().split("## The callback in five lines of Python", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    assert "Trainer(" in snippet
    assert len(snippet.strip().splitlines()) == 5
    assert snippet.count("max_epochs=5") == 1
    quick = snippet.replace(
        "max_epochs=5", "max_epochs=1, enable_checkpointing=False, enable_progress_bar=False"
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(quick, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code, on purpose
    trainer = namespace["trainer"]
    assert trainer.state.finished and trainer.current_epoch == 1
    report = sparsity_report(trainer.lightning_module)
    density = float(re.search(r"density=([0-9.]+)", snippet).group(1))
    assert report["density"] == pytest.approx(density, abs=2e-3)
    # It ends with a test of the pruned model, logged to TensorBoard under logs/ (in tmp_path here).
    assert trainer.state.fn == "test" and "test/acc" in trainer.callback_metrics
    assert sorted((tmp_path / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file in logs/"


def _bad_config(tmp_path: Path, edit) -> str:
    config = _load(CONFIG_DIR / "quickstart.yaml")
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _fails_to_parse(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unknown_key_is_refused(tmp_path, capsys):
    path = _bad_config(tmp_path, lambda c: _pruning_callback(c)["init_args"].update(densty=0.1))
    err = _fails_to_parse(["fit", "--config", path], capsys)
    assert "densty" in err
    err = _fails_to_parse(
        ["fit", "--config", str(CONFIG_DIR / "quickstart.yaml"), "--trainer.max_epoch=3"], capsys
    )
    assert "max_epoch" in err


def test_wrong_type_is_refused(tmp_path, capsys):
    path = _bad_config(tmp_path, lambda c: c["model"]["init_args"].update(num_classes="ten"))
    err = _fails_to_parse(["fit", "--config", path], capsys)
    assert "num_classes" in err and "ten" in err


def test_missing_data_folder_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no_such_folder"
    err = _fails_to_parse(
        [
            "fit",
            "--config",
            str(CONFIG_DIR / "cifar10/resnet20_px.yaml"),
            *COMMON,
            "--data.init_args.download=false",
            f"--data.init_args.data_dir={missing}",
        ],
        capsys,
    )
    assert str(missing) in err and "Traceback" not in err


def test_missing_pretrained_file_names_it(tmp_path, monkeypatch, capsys):
    # The VOC config points at a pre-trained file that is never downloaded: without it, the run stops
    # when the model is built, with the module's own message naming the file (not jsonargparse's traceback).
    monkeypatch.chdir(tmp_path)
    err = _fails_to_parse(
        ["fit", "--config", str(CONFIG_DIR / "voc2012/deeplabv3plus_resnet50_px.yaml"), *COMMON], capsys
    )
    assert (
        "model.init_args.pretrained: pretrained file pretrained/dino_resnet50_pretrain.pth does not exist"
        in err
    )
    assert "FileNotFoundError (refused by SemanticSegmenter)" in err
    assert "Traceback" not in err


def test_bad_callback_value_prints_the_callbacks_message(capsys):
    # Before: an 84-line traceback through every Union subtype jsonargparse tried, the message buried in it.
    quickstart = ["fit", "--config", str(CONFIG_DIR / "quickstart.yaml")]
    err = _fails_to_parse([*quickstart, "--trainer.callbacks.init_args.method=pxx"], capsys)
    assert "error: --trainer.callbacks.init_args.method=pxx: unknown method 'pxx'; known methods:" in err
    assert "Traceback" not in err and "Union subtypes" not in err
    assert err.strip().splitlines()[0].startswith("px-lightning: error: --trainer.callbacks")  # no usage text
    # Which class refused it (a bug in a user's class must not pass for a usage error) and how to see more.
    assert "ValueError (refused by ForesightPruningCallback)" in err and "--debug shows the traceback" in err
    # sparsity over a config that sets density: the message says what to add on the command line.
    err = _fails_to_parse([*quickstart, "--trainer.callbacks.init_args.sparsity=0.9"], capsys)
    assert "--trainer.callbacks.init_args.density=null" in err
    # ... and doing so works.
    printed = _print_config(
        [
            *quickstart,
            "--trainer.callbacks.init_args.sparsity=0.9",
            "--trainer.callbacks.init_args.density=null",
        ],
        capsys,
    )
    callback = ForesightPruningCallback(**_pruning_callback(printed)["init_args"])
    assert callback.density == pytest.approx(0.1)


def test_optimizer_option_is_refused_where_the_module_configures_its_own(capsys):
    # LightningCLI's --optimizer would replace ImageClassifier.configure_optimizers and drop the config's
    # lr_scheduler with only a warning; the module's own arguments set the optimizer instead.
    quickstart = ["fit", "--config", str(CONFIG_DIR / "quickstart.yaml")]
    err = _fails_to_parse([*quickstart, "--optimizer=Adam"], capsys)
    assert "--optimizer would replace ImageClassifier.configure_optimizers" in err
    assert "--model.init_args.optimizer=Adam" in err
    err = _fails_to_parse([*quickstart, "--lr_scheduler=StepLR", "--lr_scheduler.step_size=3"], capsys)
    assert "--lr_scheduler would replace ImageClassifier.configure_optimizers" in err
    # The advice works: Adam through the module, the config's cosine schedule kept.
    printed = _print_config(
        [*quickstart, "--model.init_args.optimizer=Adam", "--model.init_args.optimizer.lr=0.001"], capsys
    )
    model = printed["model"]["init_args"]
    assert (
        model["optimizer"]["class_path"] == "torch.optim.Adam"
        and model["optimizer"]["init_args"]["lr"] == 0.001
    )
    assert model["lr_scheduler"]["class_path"].endswith("CosineAnnealingLR")


def test_help_describes_px_lightning(capsys):
    main(["--help"])  # answered by px-lightning itself, before LightningCLI is built
    out = capsys.readouterr().out
    assert "usage: px-lightning" in out
    assert "prune vision networks at initialisation" in out
    assert "Lightning Trainer command line tool" not in out


def test_test_subcommand_on_a_fit_checkpoint(tmp_path, monkeypatch, capsys):
    # `px-lightning test --ckpt_path` on the checkpoint a pruned fit saved gives the fit's own test metrics.
    monkeypatch.chdir(tmp_path)
    quick = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=1"]
    quick += ["--trainer.enable_progress_bar=false", "--trainer.callbacks.init_args.rounds=2"]
    fit = cli_main(["fit", "--config", str(CONFIG_DIR / "quickstart.yaml"), *quick])
    fit_metrics = {k: float(v) for k, v in fit.trainer.callback_metrics.items() if k.startswith("test/")}
    (checkpoint,) = (tmp_path / "logs").rglob("*.ckpt")
    test = cli_main(
        ["test", "--config", str(CONFIG_DIR / "quickstart.yaml"), f"--ckpt_path={checkpoint}", *quick]
    )
    test_metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")}
    assert fit_metrics and test_metrics == pytest.approx(fit_metrics, abs=1e-6)
    pruning = next(c for c in fit.trainer.callbacks if isinstance(c, ForesightPruningCallback))
    # `test` prints the density table too: the loaded weights carry no masks, so it counts non-zero weights.
    out = capsys.readouterr().out
    table = out[out.rindex("Per-layer density") :]
    assert table.startswith("Per-layer density (non-zero weights (no masks on the model))")
    total = re.search(r"^total\s+(\d+)\s+(\d+)\s+([0-9.]+)$", table, flags=re.MULTILINE)
    assert total and float(total.group(3)) == pytest.approx(pruning.report["density"], abs=1e-4)
