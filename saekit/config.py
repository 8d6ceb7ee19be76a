"""Frozen dataclass configs ↔ YAML recipes ↔ command-line flags.

A recipe is a YAML file whose sections and keys map 1:1 onto nested frozen dataclasses. The
docstring written under each field is its `--help` text. Flags are the dotted path of a field
(`--stream.batch_size 8192`) and override the recipe. Unknown keys are errors that name the
key and list the valid ones.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from saekit.errors import SaekitError, closest

T = TypeVar("T")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass `cls` (and its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
"""A number in decimal or scientific notation (no nan/inf)."""


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check and convert a YAML/CLI value to the annotated type `tp`."""
    origin = get_origin(tp)
    if origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except SaekitError as exc:
                errors.append(str(exc))
        raise SaekitError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise SaekitError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise SaekitError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise SaekitError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SaekitError(f"{where}: expected true or false, got {value!r}")
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and DECIMAL.fullmatch(value.strip()):
        # YAML 1.1 (PyYAML) reads `1e-3` and `-1e-3`, with no dot, as strings.
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise SaekitError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys name the valid ones.

    A class with a static `upgrade_legacy(data, where)` first maps keys of older versions."""
    upgrade = getattr(cls, "upgrade_legacy", None)
    if upgrade is not None:
        data = upgrade(dict(data), where)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            hint = closest(str(key), names, n=3)
            did = f" Did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
            raise SaekitError(
                f"Unknown key {path!r} in {cls.__name__}.{did} Valid keys: {', '.join(names)}."
            )
        kwargs[key] = coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except SaekitError as exc:
        raise SaekitError(f"{where or cls.__name__}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-able dict of a (nested) dataclass config; unset optional sections (None)
    are left out, so a recipe shows only the sections it uses."""
    out: dict[str, Any] = {}
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None and _section_type(hints[f.name]) is not None:
            continue
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out


def load_recipe(
    cls: type[T], path: str | Path | None, overrides: dict[str, Any] | None = None
) -> T:
    """Read a YAML recipe into `cls`, then apply dotted-path overrides (`stream.batch_size`)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SaekitError(
                f"Recipe {str(p)!r} not found. Pass a YAML file, e.g. recipes/*.yaml."
            )
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            # PyYAML's message spans several lines (source excerpt, caret); keep the CLI's one.
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise SaekitError(f"Recipe {str(p)!r} is not valid YAML{where}: {problem}.") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SaekitError(f"Recipe {str(p)!r} must be a mapping of sections, got {loaded!r}.")
        if not loaded:
            # Every default is a full run (2M tokens into runs/quickstart): never by accident.
            raise SaekitError(
                f"Recipe {str(p)!r} is empty, which would run every default (2,000,000 tokens "
                "into runs/quickstart). Write the sections you want, e.g. start from a copy of "
                "`recipes/smollm2-quickstart.yaml`."
            )
        data = loaded
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted.split("."), value, dotted)
    return from_dict(cls, data)


def _set_dotted(node: dict[str, Any], parts: list[str], value: Any, dotted: str) -> None:
    """Set `a.b.c` in nested dicts; on a list of sections (`saes.k`) set it in every entry."""
    head, rest = parts[0], parts[1:]
    if not rest:
        node[head] = value
        return
    if node.get(head) is None:  # absent, or an empty YAML section (`stream:` with no keys)
        node[head] = [{}] if head in _LIST_SECTIONS else {}
    child = node[head]
    if isinstance(child, list):
        for entry in child:
            if not isinstance(entry, dict):
                raise SaekitError(f"--{dotted}: entries of {head!r} are not sections.")
            _set_dotted(entry, rest, value, dotted)
    elif isinstance(child, dict):
        _set_dotted(child, rest, value, dotted)
    else:
        raise SaekitError(f"--{dotted}: {head!r} is not a section.")


_LIST_SECTIONS = {"saes"}
"""Recipe fields holding a list of sections; a flag `--saes.k 64` applies to every entry."""


def _section_type(tp: Any) -> type | None:
    """The dataclass of a field typed as a dataclass, `dataclass | None` (an optional
    section) or tuple[dataclass, ...]."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    args = get_args(tp)
    if get_origin(tp) is types.UnionType:
        sections = [a for a in args if dataclasses.is_dataclass(a) and isinstance(a, type)]
        return sections[0] if sections else None
    if get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
        return typing.cast(type, args[0])
    return None


def _flag_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, type, help) for every leaf field of a nested dataclass."""
    out = []
    hints = _hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        section = _section_type(tp)
        if section is not None:
            out += _flag_fields(section, f"{name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((name, tp, f"{docs.get(f.name, '')} (default: {default!r})"))
    return out


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, title: str = "", hyphens: bool = False
) -> None:
    """Add one `--dotted.name VALUE` flag per leaf field (with `hyphens`, `--dotted.long-name`
    first and the underscore spelling as an alias). Values parse as YAML scalars/lists, but a
    field typed `str` takes the text as given (`--prompt "a: b"` is not a mapping)."""
    group = parser.add_argument_group(title or f"{cls.__name__} fields (override the recipe)")
    for name, tp, help_text in _flag_fields(cls):
        flags = [f"--{name}"]
        if hyphens and "_" in name:
            flags.insert(0, f"--{name.replace('_', '-')}")
        group.add_argument(
            *flags,
            dest=f"{_RAW if tp is str else 'cfg:'}{name}",
            default=argparse.SUPPRESS,
            metavar="V",
            help=help_text.replace("%", "%%"),
        )


_RAW = "cfg-text:"
"""Destination prefix of flags whose text is the value (str fields), not YAML."""


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `--dotted.name` values given on the command line, parsed as YAML (str fields: as
    given)."""
    out = {}
    for key, raw in vars(args).items():
        if key.startswith(_RAW):
            out[key[len(_RAW) :]] = raw
        elif key.startswith("cfg:"):
            try:
                out[key[4:]] = yaml.safe_load(raw)
            except yaml.YAMLError:
                out[key[4:]] = raw
    return out


def save_yaml(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
