"""What every subcommand shares: the error type, config files, ``key=value`` options, output.

Config files (``--config run.yaml`` or ``run.toml``) hold a flat mapping of the
subcommand's long options, spelled with dashes or underscores (``batch_size: 16``). The
file sets the defaults and flags given on the command line override them; unknown keys
and values of the wrong type are refused, naming the valid keys.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._extras import require
from ..runs.results import write_json
from ..runs.timing import set_threads

__all__ = [
    "AppendOverDefault",
    "CLIError",
    "add_config_option",
    "add_threads_option",
    "apply_config_file",
    "expected_value",
    "expecting",
    "given_options",
    "load_config_file",
    "non_negative_float",
    "non_negative_int",
    "parse_assignments",
    "parse_literal",
    "positive_float",
    "positive_int",
    "set_threads",
    "user_path",
    "write_json",
]


class CLIError(Exception):
    """A user error: bad path, argument or value. ``main`` prints it on one line, exit code 2."""


_Type = TypeVar("_Type", bound=Callable[..., Any])
# What builtin argparse types accept, in words
PLAIN_TYPES: dict[Any, str] = {int: "an integer", float: "a number", str: "text"}


def expecting(expected: str) -> Callable[[_Type], _Type]:
    """Mark an argparse ``type`` with what it accepts, in words ("an integer >= 1"), which
    config-file errors name (:func:`expected_value`)."""

    def mark(type_: _Type) -> _Type:
        type_.expected = expected  # type: ignore[attr-defined]
        return type_

    return mark


def expected_value(type_: Any) -> str:
    """What an argparse ``type`` accepts, in words: "an integer >= 1", "a number"."""
    return getattr(type_, "expected", None) or PLAIN_TYPES.get(type_, "a value")


def _number(text: str, kind: type, check: Any, type_: Any) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected_value(type_)}, got {text!r}") \
            from None
    if not check(value):
        raise argparse.ArgumentTypeError(f"expected {expected_value(type_)}, got {text}")
    return value


@expecting("an integer >= 1")
def positive_int(text: str) -> int:
    """argparse ``type`` for counts that must be >= 1."""
    return _number(text, int, lambda v: v >= 1, positive_int)


@expecting("an integer >= 0")
def non_negative_int(text: str) -> int:
    """argparse ``type`` for counts that may be 0."""
    return _number(text, int, lambda v: v >= 0, non_negative_int)


@expecting("a number > 0")
def positive_float(text: str) -> float:
    """argparse ``type`` for durations and rates that must be > 0."""
    return _number(text, float, lambda v: v > 0 and math.isfinite(v), positive_float)


@expecting("a number >= 0")
def non_negative_float(text: str) -> float:
    """argparse ``type`` for durations that may be 0."""
    return _number(text, float, lambda v: v >= 0 and math.isfinite(v), non_negative_float)


@expecting("a path")
def user_path(text: str) -> str:
    """argparse ``type`` of path options: ``~`` expanded, as the shell does before a flag's
    value but not in a config file (nor after ``--out=``)."""
    return os.path.expanduser(text)


def parse_literal(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"[1, 2]"`` -> [1, 2], else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(items: Sequence[str], option: str) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}`` (dots make nested dicts)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"{option} expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CLIError(f"{option}: {key!r} conflicts with the earlier value of {part!r}")
            node = child
        node[leaf] = parse_literal(value)
    return out


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", type=user_path,
        help="YAML or TOML file of option values (keys are the long options, e.g. "
             "batch_size: 16; paths in it are relative to the current folder, as on the "
             "command line, ~ is the home folder); options given on the command line "
             "override it",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: ``main`` applies it (``set_threads``) before the command runs."""
    parser.add_argument(
        "--threads", type=positive_int,
        help="CPU threads for torch and the CPU kernels (default: torch's); 1 is much "
             "faster on a machine busy with other work",
    )


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file holding one mapping."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise CLIError(f"config file {path}: invalid TOML: {err}") from None
    elif suffix in (".yaml", ".yml"):
        yaml = require("yaml", f"--config {path}")
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise CLIError(f"config file {path}: invalid YAML: {' '.join(str(err).split())}") \
                from None
        values = {} if values is None else values
    else:
        raise CLIError(f"config file {path}: expected a .yaml, .yml or .toml file")
    if not isinstance(values, dict):
        raise CLIError(f"config file {path}: expected a mapping of option: value, "
                       f"got a {type(values).__name__}")
    return values


def _file_value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """Check (and convert, like a command-line string would be) one value from a file."""
    where = f"config file {path}: {key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise CLIError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None:
        raise CLIError(f"{where} is empty (null); give it a value, or leave the key out "
                       "for the default")
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        if isinstance(value, dict) and action.metavar == "KEY=VALUE":
            return _assignments(value, where)
        values = value if isinstance(value, list) else [value]
        return [_convert(action, where, v) for v in values]
    if isinstance(value, list) and action.metavar and "," in action.metavar:
        value = ",".join(map(str, value))  # [0, 0, 1, 1] as the flag's 0,0,1,1
    if isinstance(value, (list, dict)):
        raise CLIError(f"{where} must be a single value, got {value!r}")
    return _convert(action, where, value)


def _assignments(mapping: dict[str, Any], where: str, prefix: str = "") -> list[str]:
    """``{"a": 1, "b": {"c": "x"}}`` -> ``["a=1", "b.c=x"]``: a file's mapping as the
    KEY=VALUE entries of the flag (:func:`parse_assignments` reads them back)."""
    entries = []
    for key, value in mapping.items():
        if "." in str(key):
            raise CLIError(f"{where}: key {prefix}{key!s}: a key of a mapping cannot hold a dot "
                           "(a dot nests the key); nest the mapping instead")
        if isinstance(value, dict) and value:
            entries += _assignments(value, where, f"{prefix}{key}.")
        else:  # JSON, strings quoted: "none" or "2" stay strings when read back
            entries.append(f"{prefix}{key}={json.dumps(value)}")
    return entries


def _convert(action: argparse.Action, where: str, value: Any) -> Any:
    if value is None:
        raise CLIError(f"{where} holds an empty (null) entry")
    if isinstance(value, bool) and action.type not in (None, str):
        raise CLIError(f"{where} must be {expected_value(action.type)}, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
            if action.type in PLAIN_TYPES:  # int's and float's own errors name the type
                raise CLIError(f"{where} must be {expected_value(action.type)}, got "
                               f"{value!r}") from None
            raise CLIError(f"{where}: {err}") from None
    elif not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise CLIError(f"{where} must be one of {sorted(action.choices)}, got {value!r}")
    return value


class AppendOverDefault(argparse._AppendAction):
    """``action="append"`` (every subcommand's: :class:`deformconv.cli._Parser` registers it)
    whose first value on the command line replaces the default, a config file's list,
    instead of adding to it: flags override the file, as for every other option."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is self.default:  # argparse's own object
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option_string)


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options that ``argv`` names explicitly (``--lr 0.1``, ``--lr=0.1``).

    Needs ``allow_abbrev=False`` on ``parser`` (all subcommands set it), so every option
    appears under one of its full names.
    """
    dests = {s: a.dest for a in parser._actions for s in a.option_strings}
    return {dests[t.split("=", 1)[0]] for t in argv
            if t.startswith("-") and t.split("=", 1)[0] in dests}


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> set[str]:
    """Make the file's values the defaults of ``parser`` (so flags still override them);
    returns the destinations it set."""
    values = load_config_file(path)
    actions = {a.dest: a for a in parser._actions
               if a.option_strings and a.dest not in ("help", "config")}
    positionals = {a.dest for a in parser._actions if not a.option_strings}
    defaults = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key in positionals:
            raise CLIError(f"config file {path}: {raw_key!r} is a positional argument; give it "
                           "on the command line")
        if key not in actions:
            valid = ", ".join(sorted(actions))
            raise CLIError(f"config file {path}: unknown key {raw_key!r}; valid keys: {valid}")
        defaults[key] = _file_value(actions[key], str(raw_key), value, path)
    parser.set_defaults(**defaults)
    return set(defaults)
