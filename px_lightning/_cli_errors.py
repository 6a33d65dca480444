"""Short error messages for the ``px-lightning`` command line, in the user's own terms.

jsonargparse and LightningCLI report a bad value as a usage text plus a nested "does not validate against
any of the Union subtypes" report, and a class's refusal (a callback's ``ValueError``) with the source line
it was raised at. This module turns each into one short message that names the option as the user wrote
it: ``--trainer.callbacks.init_args.density=1.5`` on the command line, or ``bad.yaml:
trainer.callbacks[0].init_args.densty`` in a config file, then the value, what is allowed and, for a
misspelt key, the closest accepted ones. Only the standard library and PyYAML: nothing here imports torch.

Example:
    >>> explain_parse_error("unrecognized arguments: --trainer.max_epoch=3", ["fit", "--trainer.max_epoch=3"],
    ...                     ["--trainer.max_epochs", "--trainer.min_epochs"])
    "--trainer.max_epoch=3: unknown option; did you mean --trainer.max_epochs?"
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "CommandLineError",
    "config_files",
    "debug_requested",
    "explain_build_error",
    "explain_parse_error",
    "explain_run_error",
    "locate_option",
]

HINT = "`px-lightning {subcommand} --help` lists the options; --debug shows the traceback"


class CommandLineError(Exception):
    """A mistake in the command or its config files: printed as ``error: <message>``, exit status 2."""


def debug_requested() -> bool:
    """Whether full tracebacks were asked for (``--debug`` sets it; jsonargparse's own ``JSONARGPARSE_DEBUG``).

    Example:
        >>> os.environ["JSONARGPARSE_DEBUG"] = "1"; debug_requested()
        True
    """
    return os.environ.get("JSONARGPARSE_DEBUG", "").lower() not in ("", "0", "false")


def config_files(argv: list[str]) -> list[str]:
    """The config files ``argv`` names with ``--config FILE``, ``--config=FILE`` or ``-c FILE``, in order.

    Example:
        >>> config_files(["fit", "--config", "a.yaml", "-c=b.yaml"])
        ['a.yaml', 'b.yaml']
    """
    files = []
    for i, arg in enumerate(argv):
        for flag in ("--config", "-c"):
            if arg == flag and i + 1 < len(argv):
                files.append(argv[i + 1])
            elif arg.startswith(flag + "="):
                files.append(arg[len(flag) + 1 :])
    return files


def _cli_value(argv: list[str], key: str) -> str | None:
    """The value given on the command line for ``key`` (dotted, ``init_args`` optional), or None."""
    spellings = {key, key.replace(".init_args.", ".")}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name[2:] in spellings:
            if eq:
                return value
            return argv[i + 1] if i + 1 < len(argv) else ""
    return None


def _load_yaml(path: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def _find_in_yaml(
    node: Any, keys: list[str], class_name: str | None, where: str = ""
) -> tuple[str, Any] | None:
    """The YAML path (``trainer.callbacks[1].init_args.density``) and value of ``keys`` in ``node``."""
    if not keys:
        return where, node
    if isinstance(node, list):
        # `--trainer.callbacks.init_args.x` means the last callback; in a file, the entry that has the key.
        for i in reversed(range(len(node))):
            element = node[i]
            if class_name and isinstance(element, dict):
                path = str(element.get("class_path", ""))
                if path and path.rpartition(".")[2] != class_name:
                    continue
            found = _find_in_yaml(element, keys, class_name, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if not isinstance(node, dict):
        return None
    key, rest = keys[0], keys[1:]
    prefix = f"{where}.{key}" if where else key
    if key in node:
        return _find_in_yaml(node[key], rest, class_name, prefix)
    if key == "init_args":  # `model: {class_path: ..., num_classes: 10}` is valid YAML too
        return _find_in_yaml(node, rest, class_name, where)
    return None


def locate_option(key: str, argv: list[str], class_name: str | None = None) -> tuple[str, Any] | None:
    """Where the user set option ``key``: ``("--a.b=v", v)`` on the command line, ``("file: a.b", v)`` in a file.

    The command line wins over the files (as in the parser); among the files, the last one that sets it.

    Example:
        >>> locate_option("trainer.max_epochs", ["fit", "--trainer.max_epochs=3"])
        ('--trainer.max_epochs=3', '3')
    """
    value = _cli_value(argv, key)
    if value is not None:
        return f"--{key}={value}", value
    for path in reversed(config_files(argv)):
        found = _find_in_yaml(_load_yaml(path), key.split("."), class_name)
        if found is not None:
            where, value = found
            return f"{path}: {where}", value
    return None


def _cli_only(argv: list[str]) -> list[str]:
    """``argv`` without its ``--config`` files (so that a lookup sees the command line only)."""
    files = set(config_files(argv))
    return [a for a in argv if a not in files and a.partition("=")[2] not in files]


def _accepted(class_path: str) -> list[str]:
    """The keyword arguments ``class_path``'s ``__init__`` accepts ([] if it cannot be imported)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
        params = inspect.signature(cls.__init__).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _did_you_mean(word: str, candidates: list[str], spell=lambda c: c) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(spell(c) for c in close)}?" if close else ""


def _expected(reason: str, value: Any = None) -> str:
    """jsonargparse's "Expected a <class 'int'>. Got value: ten" as "expected an int, got 'ten'"."""
    match = re.match(r"Expected a <class '(\w+)'>(?:\. Got value: (.*))?", reason)
    if match:
        kind, given = match.groups()
        given = given if given is not None else value
        article = "an" if kind[0] in "aeiou" else "a"
        return f"expected {article} {kind}" + (f", got {given!r}" if given is not None else "")
    return reason


def _where(key: str, argv: list[str], class_name: str | None) -> str:
    found = locate_option(key, argv, class_name)
    return found[0] if found else key


def _parse_nested(lines: list[str]) -> tuple[list[str], str | None, str]:
    """Walk jsonargparse's nested report: (inner keys, the class that refused it, the innermost reason)."""
    keys: list[str] = []
    class_path = None
    reason = ""
    for line in lines:
        text = line.strip().removeprefix("- ").strip()
        problem = re.match(r"Problem with given class_path '([^']+)':", text)
        key = re.match(r'Parser key "([^"]+)":?\s*(.*)', text)
        if problem:
            class_path = problem.group(1)
            keys.append("init_args")
        elif key:
            keys.extend(key.group(1).split("."))
            if key.group(2):
                reason = key.group(2)
                break
        elif text and not text.startswith(("Does not validate", "Subtypes:", "Errors:")):
            reason = text
            break
    return keys, class_path, reason


def explain_parse_error(message: str, argv: list[str], options: list[str], subcommand: str = "fit") -> str:
    """jsonargparse's parse error ``message`` as one short message in the user's terms.

    ``options`` are the option strings the subcommand accepts (for "did you mean").

    Example:
        >>> explain_parse_error('Parser key "trainer.max_epochs":\\n  Expected a <class \\'int\\'>. Got value: x',
        ...                     ["fit", "--trainer.max_epochs=x"], [])
        "--trainer.max_epochs=x: expected an int, got 'x'"
    """
    hint = HINT.format(subcommand=subcommand)
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    if unknown:
        given = unknown.group(1).split()
        names = [g.partition("=")[0] for g in given if g.startswith("--")]
        advice = _did_you_mean(names[0], options) if names else ""
        return f"{' '.join(given)}: unknown option{advice}\n  {hint}"
    lines = message.splitlines()
    top = re.match(r'Parser key "([^"]+)":?\s*(.*)', lines[0]) if lines else None
    if top is None:
        missing = re.search(r"(?:Unable to load config|No such file or directory|does not exist)", message)
        first = lines[0] if lines else message
        return first if not missing else f"{first}\n  {hint}"
    keys, class_path, reason = _parse_nested(
        lines[1:] if not top.group(2) else [lines[0][len(top.group(0)) :]]
    )
    if top.group(2) and not keys:
        reason = top.group(2)
    key = ".".join([top.group(1), *keys])
    class_name = class_path.rpartition(".")[2] if class_path else None
    accepted_key = re.search(r"Key '([^']+)' is not expected|Option '([^']+)' is not accepted", reason)
    inner_class = re.search(r"class_path='([^']+)'", reason)
    if accepted_key and inner_class:  # a class inside a callable-typed argument (an lr_scheduler)
        class_path = inner_class.group(1)
        class_name = class_path.rpartition(".")[2]
        key = f"{key}.init_args"
    found = locate_option(key, argv, class_name)
    where = found[0] if found else key
    if accepted_key and class_path:
        bad = accepted_key.group(1) or accepted_key.group(2)
        accepted = _accepted(class_path)
        where = _where(key + ("" if key.endswith(f".{bad}") else f".{bad}"), argv, class_name)
        return (
            f"{where}: {class_name} has no argument {bad!r}{_did_you_mean(bad, accepted, repr)}\n"
            f"  {class_name} takes: {', '.join(accepted)}\n  {hint}"
        )
    value = found[1] if found else None
    return f"{where}: {_expected(reason, value) or message.splitlines()[0]}\n  {hint}"


def _configured_classes(node: Any, key: str = "") -> list[tuple[str, str, Any]]:
    """Every ``class_path`` entry of a parsed config: (dotted key as the CLI spells it, class path, init_args)."""
    found = []
    if hasattr(node, "class_path") or (isinstance(node, dict) and "class_path" in node):
        get = node.get if isinstance(node, dict) else lambda k, d=None: getattr(node, k, d)
        found.append((key, str(get("class_path")), get("init_args", None)))
        node = get("init_args", None)
        key = f"{key}.init_args"
    # A jsonargparse Namespace's items() are its flattened leaves: walk its direct children (vars) instead.
    items = (
        node.items() if isinstance(node, dict) else vars(node).items() if hasattr(node, "__dict__") else []
    )
    for name, value in items:
        found += _configured_classes(value, f"{key}.{name}" if key else name)
    if isinstance(node, list):
        for value in node:
            found += _configured_classes(value, key)
    return found


def _refusing_entry(err: BaseException, config: Any) -> tuple[str, str, Any] | None:
    """The configured class whose ``__init__`` raised ``err`` (the outermost such frame), or None."""
    entries = _configured_classes(config)
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        me = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        for entry in entries if me is not None else []:
            cls = type(me)
            if entry[1] in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__) or (
                entry[1].rpartition(".")[2] == cls.__name__
            ):
                return entry
        tb = tb.tb_next
    return None


def explain_build_error(err: BaseException, config: Any, argv: list[str], subcommand: str = "fit") -> str:
    """A class's refusal of its configured arguments (``err``), named by the option the user wrote.

    The option is the refusing class's argument that ``err``'s message names first (``density`` in
    "density must be in (0, 1], got 1.5").

    Example:
        >>> explain_build_error(ValueError("density must be in (0, 1], got 1.5"), config, argv)
        '--trainer.callbacks.init_args.density=1.5: density must be in (0, 1], got 1.5\\n  ...'
    """
    message = str(err).strip() or type(err).__name__
    entry = _refusing_entry(err, config)
    origin = ""
    if entry is not None:
        key, class_path, init_args = entry
        class_name = class_path.rpartition(".")[2]
        names = list(init_args) if isinstance(init_args, dict) else list(vars(init_args) if init_args else [])
        positions = {n: m.start() for n in names if (m := re.search(rf"\b{re.escape(n)}\b", message))}
        origin = f" (refused by {class_name})"
        if positions:
            # The argument the message names first, preferring one the user set on the command line.
            given = [n for n in positions if locate_option(f"{key}.init_args.{n}", _cli_only(argv))]
            name = min(given or positions, key=positions.get)
            found = locate_option(f"{key}.init_args.{name}", argv, class_name)
            if found is not None:
                return f"{found[0]}: {message}\n  {type(err).__name__}{origin}; {HINT.format(subcommand=subcommand)}"
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    raiser = f" from {frames[-1].f_globals.get('__name__')}.{frames[-1].f_code.co_name}" if frames else ""
    return f"{type(err).__name__}{raiser}{origin}: {message}\n  {HINT.format(subcommand=subcommand)}"


def explain_run_error(err: FileNotFoundError, argv: list[str], subcommand: str = "fit") -> str:
    """A missing dataset folder or checkpoint found once the run started, in the command line's spelling.

    Example:
        >>> explain_run_error(FileNotFoundError("data/x does not exist; pass download=True to fetch it"), argv)
        'data/x does not exist; add --data.init_args.download=true to fetch it\\n  ...'
    """
    message = str(err)
    # The DataModules speak Python (`download=True`); on the command line the same switch is spelt so.
    message = re.sub(r"\bpass download=True\b", "add --data.init_args.download=true", message)
    message = re.sub(r"\bdownload=True\b", "--data.init_args.download=true", message)
    message = re.sub(r"\bpoint data_dir at\b", "point --data.init_args.data_dir at", message)
    where = ""
    for key in ("ckpt_path", "data.init_args.data_dir"):
        found = locate_option(key, argv)
        if found is not None and str(found[1]) in message:
            where = f"{found[0]}: "
            break
    return f"{where}{message}\n  {HINT.format(subcommand=subcommand)}"
