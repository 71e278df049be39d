"""Configuration errors of the ``lit-rlhf`` command as one line: the key, the YAML file it came from, and
the closest valid key (or, for a key that moved into a settings group, its new name: ``settings.MOVED_KEYS``),
instead of jsonargparse's usage text and nested union report (``--help`` still prints the usage)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, get_args, get_type_hints

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from lit_rlhf.errors import ConfigError
from lit_rlhf.settings import MOVED_KEYS

_CLASS_PATH = re.compile(r"Problem with given class_path '([\w.]+)':")
_PARSER_KEY = re.compile(r'Parser key "([\w.]+)"')
_NOT_ACCEPTED = re.compile(r"Option '([\w.]+)' is not accepted")
_EXPECTED = re.compile(r"Expected a <class '([\w.]+)'>\. Got value: (.*)")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)")
_GROUP_OPTION = re.compile(r"(?:Group|Subcommand) '([\w.]+)' does not accept option '([\w.]+)'")


class OneLineErrorParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors become a :class:`ConfigError` with one line (exit code 2)."""

    #: The command's arguments, to find which ``--config`` file a bad key came from (set by the CLI).
    command_args: Sequence[str] = ()
    #: The directory the command started in: jsonargparse parses a config file from inside its own directory.
    command_dir: Optional[str] = None

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error:  # jsonargparse trying alternatives internally: keep its behaviour
            return super().error(message, ex)
        raise ConfigError(describe_parse_error(message, self.command_args, self._option_names())) from ex

    def _option_names(self) -> list[str]:
        return [option for action in self._actions for option in action.option_strings if option.startswith("--")]


def describe_parse_error(message: str, argv: Sequence[str], options: Sequence[str] = ()) -> str:
    """One line for a jsonargparse error ``message``."""
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        names = [arg.split("=")[0] for arg in unrecognized.group(1).split() if arg.startswith("--")]
        name = names[0] if names else unrecognized.group(1).strip()
        key = name.lstrip("-")
        class_path, keys = _CLASS_PATH.search(message), _PARSER_KEY.findall(message)
        if class_path and keys:  # an option of a class's argument, e.g. a settings group's field
            if _moved_within(key, _init_arguments(class_path.group(1))):
                return _moved(f"{keys[0]}.init_args.{key}", argv)
            return _unknown_option_of(f"{keys[0]}.init_args.{key}", class_path.group(1), argv)
        if key.startswith("model.") and key.rsplit(".", 1)[-1] in MOVED_KEYS:
            return _moved(key, argv)
        return f"{name}: unknown option{_did_you_mean(name, options)}"
    keys = _PARSER_KEY.findall(message)
    class_path = _CLASS_PATH.search(message)
    group_option = _GROUP_OPTION.search(message)
    if group_option and keys and class_path:  # a field of a class's settings group (optimizer, kl, ...), e.g. in YAML
        group, name = group_option.groups()
        return _unknown_option_of(f"{keys[0]}.init_args.{group}.{name}", class_path.group(1), argv)
    if group_option:  # a key under a group (trainer, data, ...) that it does not have
        group, name = group_option.groups()
        key = name if group == "fit" or "." in name else f"{group}.{name}"
        valid = [option.lstrip("-") for option in options if option.startswith(f"--{key.split('.')[0]}.")]
        if key.startswith("trainer."):
            valid += [f"trainer.{name}" for name in _init_arguments("lightning.pytorch.trainer.trainer.Trainer")]
        return f"{_origin(key, argv)}{key}: unknown option{_did_you_mean(key, valid)}"
    not_accepted = _NOT_ACCEPTED.search(message)
    if keys and not_accepted:
        group, name = keys[0], not_accepted.group(1)
        key = f"{group}.init_args.{name}" if class_path else f"{group}.{name}"
        valid = _init_arguments(class_path.group(1)) if class_path else []
        if _moved_within(name, valid):
            return _moved(key, argv)
        owner = f" of {class_path.group(1).rsplit('.', 1)[-1]}" if class_path else ""
        return f"{_origin(key, argv)}{key}: unknown option{owner}{_did_you_mean(name, valid)}"
    expected = _EXPECTED.search(message)
    if keys and expected:
        group, name = keys[0], keys[-1]
        key = f"{group}.init_args.{name}" if class_path and name != group else name
        return f"{_origin(key, argv)}{key}: expected {_type_name(expected.group(1))}, got {expected.group(2).strip()!r}"
    literal = _LITERAL.search(message)
    if keys and literal:  # a value outside an option's choices
        group, name = keys[0], keys[-1]
        key = f"{group}.init_args.{name}" if class_path and name != group else name
        return f"{_origin(key, argv)}{key}: must be one of {literal.group(1)}, got {literal.group(2).strip()!r}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    detail = next(
        (
            line
            for line in lines[1:]
            if not line.startswith(("Does not validate", "Subtypes", "Errors", "- Expected", "Given value"))
        ),
        "",
    )
    return " ".join(part for part in (lines[0] if lines else message, detail) if part).strip() + " (see `--help`)"


def _unknown_option_of(key: str, class_path: str, argv: Sequence[str]) -> str:
    """``<file>: model.init_args.optimizer.lr: unknown option of SFTModule; did you mean ...``."""
    owner = class_path.rsplit(".", 1)[-1]
    return f"{_origin(key, argv)}{key}: unknown option of {owner}{_did_you_mean(key, _init_arguments(class_path))}"


def _moved_within(name: str, valid: Sequence[str]) -> bool:
    """Whether ``name`` is an old key (``settings.MOVED_KEYS``) whose new key (or at least its group) the class
    takes."""
    new = MOVED_KEYS.get(name)
    return new is not None and (new in valid or new.split(".")[0] in valid)


def _moved(key: str, argv: Sequence[str]) -> str:
    """``<file>: model.init_args.learning_rate: moved to model.init_args.optimizer.learning_rate``."""
    prefix, _, name = key.rpartition(".")
    return f"{_origin(key, argv)}{key}: moved to {prefix + '.' if prefix else ''}{MOVED_KEYS[name]}"


def _type_name(name: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(name, name)


def _did_you_mean(name: str, valid: Sequence[str]) -> str:
    bare = {option.lstrip("-").rsplit(".", 1)[-1]: option for option in valid}
    close = difflib.get_close_matches(name.lstrip("-").rsplit(".", 1)[-1], list(bare), n=1, cutoff=0.6)
    return f"; did you mean '{bare[close[0]]}'?" if close else ""


def _init_arguments(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    names: list[str] = []
    for klass in cls.__mro__:  # subclasses pass **kwargs up: their parents' arguments are valid too
        if "__init__" in vars(klass):
            names += [p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "args", "kwargs")]
            names += _group_options(klass.__init__)
    return list(dict.fromkeys(names))


def _group_options(init) -> list[str]:
    """``optimizer.learning_rate``, ...: the options of the settings groups (dataclass arguments) of ``init``."""
    try:
        hints = get_type_hints(init)
    except Exception:  # an annotation that does not resolve here: no group options to offer
        return []
    options = []
    for name, hint in hints.items():
        for group in (hint, *get_args(hint)):  # the group itself, or inside Optional[...]
            if isinstance(group, type) and dataclasses.is_dataclass(group):
                options += [f"{name}.{field.name}" for field in dataclasses.fields(group)]
    return options


def _origin(key: str, argv: Sequence[str]) -> str:
    """``"<file>: "`` for the last ``--config`` file that sets ``key``; ``""`` when it came from the command line."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config", "-c")]
    files += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    if any(arg.split("=")[0].lstrip("-") == key for arg in argv):
        return ""
    for path in reversed(files):
        if _has_key(_load_yaml(path), key.split(".")):
            return f"{path}: "
    return ""


def _load_yaml(path: str) -> Any:
    start = OneLineErrorParser.command_dir
    try:
        return yaml.safe_load((Path(start) / path if start else Path(path)).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _has_key(node: Any, parts: list[str]) -> bool:
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return False
        if part not in node:
            # `data: {init_args: ...}` may also be written without init_args, and `model: x.Y` shorthand
            return part == "init_args" and _has_key(node, parts[i + 1 :])
        node = node[part]
    return True
