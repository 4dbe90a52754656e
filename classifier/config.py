"""Typed configs and the one command-line grammar of every finsent command.

Every command owns one pydantic model derived from :class:`Config` (``extra="forbid"``, a docstring, every
field ``Field(default, description=...)``, checks in validators). Its settings come, in this order, from

1. the model's defaults,
2. ``--config FILE.yaml`` (a mapping of field names; nested models are nested mappings),
3. ``key=value`` overrides: dotted keys reach nested models (``drift.window_records=500``) and keys of mapping
   settings (``security.sasl_mechanism=PLAIN``; they edit the default mapping, while a mapping given whole in
   the file replaces it); values are parsed as YAML scalars (``epochs=3``, ``use_gpu=auto``,
   ``train_files=[a.txt,b.txt]``, ``run_name=null``).

``--help-config`` lists every field (dotted name, type, default, description) generated from the model and
``--print-config`` prints the effective config as YAML that loads back unchanged through ``--config``.
A command's ``main(argv)`` gets all of this from one call::

    cfg = parse_command(EvaluateConfig, argv, prog="finsent evaluate")

Bad settings raise :class:`~classifier.errors.ConfigError` in one shape, one line per problem:
``<dotted.field>: <what is wrong> (got <value>)[; <fix>]``; unknown keys read
``unknown config key(s): epoch (did you mean epochs?)``.

Token rule of the command line: a token matching ``^[A-Za-z_][A-Za-z0-9_.]*=`` is an override; a token
starting with ``-`` is an option; anything else (and everything after ``--``) is a positional input of the
commands that take one (``finsent predict "文本"``), so a text that itself looks like ``key=...`` goes after ``--``.
"""

from __future__ import annotations

import argparse
import collections.abc
import difflib
import logging
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo, field_validator

from classifier.errors import ConfigError, FinsentError

log = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel)

#: a command-line token that is a ``key=value`` override (ASCII key, so Chinese texts with '=' stay positional)
OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")

HELP_HINT = "--help-config lists every key"

#: a logging level setting (``log_level=debug`` works too)
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"],
                     BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)]


class Config(BaseModel):
    """Base of every finsent config: unknown keys are errors, defaults are validated, and a bad value raises
    :class:`ConfigError` naming the field, the value and the fix (also from the constructor)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, coerce_numbers_to_str=True)

    #: ``key=value`` settings that make a minimal valid config of this command (docs, the CLI grammar test)
    example_overrides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, type(self))) from None

    @field_validator("*", mode="before")
    @classmethod
    def _comma_separated_list(cls, value: Any, info: ValidationInfo) -> Any:
        """``files=a.txt,b.txt`` (a plain string) for a list field that takes no string: split at commas."""
        if isinstance(value, str) and info.field_name in cls.model_fields:
            leaves = _leaf_types(cls.model_fields[info.field_name].annotation)
            if leaves & {list, tuple, set, frozenset} and not leaves & {str, Path}:
                return [v.strip() for v in value.split(",") if v.strip()]
        return value


# ------------------------------------------------------------------------------------------- type helpers
def _leaf_types(ann: Any) -> set[Any]:
    """The classes an annotation accepts at its top level (Union/Optional flattened, Literal → its values'
    classes, generic aliases → their origin)."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_leaf_types(a) for a in typing.get_args(ann)))
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(ann)}
    if origin is typing.Annotated:
        return _leaf_types(typing.get_args(ann)[0])
    if origin is not None:
        return {origin}
    if ann is None:
        return {type(None)}
    return {ann}


def _model_in(ann: Any) -> type[BaseModel] | None:
    """The nested model of an annotation (``DriftConfig``, ``DriftConfig | None``), if any; a mapping or
    list of models is not a nested model (see :func:`_mapping_value`)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if typing.get_origin(ann) in (typing.Union, types.UnionType, typing.Annotated):
        for a in typing.get_args(ann):
            m = _model_in(a)
            if m is not None:
                return m
    return None


_NOT_MAPPING = object()


def _mapping_value(ann: Any) -> Any:
    """The value annotation of a mapping field (``dict[str, SplitSource]`` → ``SplitSource``, a plain
    ``dict`` → ``Any``), else ``_NOT_MAPPING``."""
    origin = typing.get_origin(ann)
    if ann is dict or origin in (dict, Mapping, collections.abc.MutableMapping):
        args = typing.get_args(ann)
        return args[1] if len(args) == 2 else Any
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for a in typing.get_args(ann):
            v = _mapping_value(a)
            if v is not _NOT_MAPPING:
                return v
    return _NOT_MAPPING


def _annotation_at(cls: type[BaseModel], dotted: str) -> Any:
    """The annotation of a dotted key, through nested models and mapping keys (``sources.news.train``);
    ``None`` when the key is unknown."""
    model: type[BaseModel] | None = cls
    ann: Any = None
    value_of_key: Any = _NOT_MAPPING
    for part in dotted.split("."):
        if value_of_key is not _NOT_MAPPING:  # ``part`` is a key of a mapping setting
            ann = value_of_key
        elif model is None or part not in model.model_fields:
            return None
        else:
            ann = model.model_fields[part].annotation
        model = _model_in(ann)
        value_of_key = _mapping_value(ann) if model is None else _NOT_MAPPING
    return ann


def type_name(ann: Any) -> str:
    """A short readable name of an annotation: ``int``, ``str | null``, ``'none' | 'fgm' | 'pgd'``."""
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if ann is type(None) or ann is None:
        return "null"
    if ann is Any:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a).lower() for a in args)
    if origin in (list, tuple, set, frozenset):
        inner = [a for a in args if a is not Ellipsis]
        return f"list[{type_name(inner[0])}]" if inner else "list"
    if origin is dict or ann is dict:
        return "mapping"
    if isinstance(ann, type):
        return "path" if issubclass(ann, Path) else ann.__name__
    return str(ann).replace("typing.", "")


# ------------------------------------------------------------------------------------------- errors
_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "none_required": "null",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}


def _dotted(cls: type[BaseModel], loc: Sequence[Any], *, unknown: bool = False) -> tuple[str, str]:
    """(dotted path of the field whose value failed, full dotted path) of a pydantic error location; the
    first stops at a union, whose member tags (``literal['auto']``, ``list[float]``) are left out."""
    parts: list[str] = []
    head: str | None = None
    model: type[BaseModel] | None = cls
    value_of_key: Any = _NOT_MAPPING
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        last = i == len(loc) - 1
        if value_of_key is not _NOT_MAPPING:  # a key of a mapping setting
            parts.append(str(item))
            ann = value_of_key
        elif model is not None and item in model.model_fields:
            parts.append(item)
            ann = model.model_fields[item].annotation
        elif unknown and last:
            parts.append(str(item))
            continue
        else:
            if head is None:  # a union member tag
                head = ".".join(parts).replace(".[", "[")
            continue
        model = _model_in(ann)
        value_of_key = _mapping_value(ann) if model is None else _NOT_MAPPING
    full = ".".join(parts).replace(".[", "[")
    return (full if head is None else head), full


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problem(path: str, errors: list[dict[str, Any]], cls: type[BaseModel]) -> str:
    """One line for the errors of one field (several when a union's members each failed)."""
    for e in errors:  # a validator's own message already says what is wrong and how to fix it
        err = (e.get("ctx") or {}).get("error")
        if e["type"] in ("value_error", "assertion_error") and err is not None:
            msg = str(err)
            if not path or msg.startswith(path):
                return msg
            sub = _model_in(_annotation_at(cls, path))
            head = re.match(r"[A-Za-z_]\w*", msg)
            if sub is not None and head and head.group(0) in sub.model_fields:
                return f"{path}.{msg}"
            return f"{path}: {msg}"
    e = errors[0]
    value = e.get("input")
    fix = ""
    if e["type"] in ("list_type", "tuple_type", "set_type"):
        fix = f"; write e.g. {path}=[a,b]"
    elif e["type"] in ("dict_type", "model_type", "model_attributes_type"):
        fix = f"; write e.g. {path}.KEY=VALUE"
    if e["type"] == "missing":
        return f"{path}: is required; set {path}=VALUE ({HELP_HINT})"
    if len(errors) == 1:
        if e["type"] == "literal_error":
            return f"{path}: {_fmt(value)} is not allowed; choose one of {e['ctx']['expected']}"
        if e["type"] in _EXPECTED:
            return f"{path}: expected {_EXPECTED[e['type']]} (got {_fmt(value)}){fix}"
        return f"{path}: {e['msg']} (got {_fmt(value)}){fix}"
    wanted: list[str] = []
    for x in errors:
        w = x["ctx"]["expected"] if x["type"] == "literal_error" else _EXPECTED.get(x["type"], x["msg"])
        if w not in wanted:
            wanted.append(w)
    return f"{path}: {_fmt(value)} is not allowed; expected {' or '.join(wanted)}"


def format_validation_error(err: ValidationError, cls: type[BaseModel]) -> str:
    """The ConfigError text of a pydantic ValidationError: one line per problem, unknown keys first."""
    unknown: list[str] = []
    fields: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for e in err.errors(include_url=False):
        if e["type"] == "extra_forbidden":
            path = _dotted(cls, e["loc"], unknown=True)[1]
            parent, _, _ = path.rpartition(".")
            model = _model_in(_annotation_at(cls, parent)) if parent else cls
            known = list(model.model_fields) if model is not None else []
            close = difflib.get_close_matches(path.rpartition(".")[2], known, n=1)
            prefix = f"{parent}." if parent else ""
            unknown.append(path + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
            continue
        head, full = _dotted(cls, e["loc"])
        fields.setdefault(head, []).append((full, e))
    groups: dict[str, list[dict[str, Any]]] = {}
    for items in fields.values():
        # a union whose members failed at different depths: the deepest got furthest (class_weights[1])
        deepest = max(len(e["loc"]) for _, e in items)
        for full, e in items:
            if len(e["loc"]) == deepest:
                groups.setdefault(full, []).append(e)
    lines = [_problem(path, errs, cls) for path, errs in groups.items()]
    if unknown:
        lines.insert(0, f"unknown config key(s): {', '.join(unknown)}; {HELP_HINT}")
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} config problems:\n  " + "\n  ".join(lines)


# ------------------------------------------------------------------------------------------- loading
def parse_value(raw: str, annotation: Any = None) -> Any:
    """A ``key=value`` value as a YAML scalar, kept as the raw string where the field wants a string and
    YAML would make it something else (``model_name=123``, ``run_name=on``)."""
    import yaml

    if not raw.strip():
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if annotation is None or isinstance(value, (str, list, dict)):
        return value
    leaves = _leaf_types(annotation)
    accepted = (value is None and type(None) in leaves) or (
        isinstance(value, bool) and bool in leaves) or (
        isinstance(value, int) and not isinstance(value, bool) and leaves & {int, float}) or (
        isinstance(value, float) and float in leaves)
    if not accepted and leaves & {str, Path}:
        return raw
    return value


def parse_overrides(overrides: Iterable[str], cls: type[BaseModel] | None = None) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` → ``{"a": 1, "b": {"c": "x"}}`` (values parsed by :func:`parse_value`)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value: write e.g. epochs=3")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key: write e.g. epochs=3")
        value = parse_value(raw, _annotation_at(cls, key) if cls is not None else None)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = node[p] = {}
            node = child
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``; nested mappings are merged key by key."""
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def read_yaml_mapping(path: str | Path | None) -> dict[str, Any]:
    """The ``key: value`` mapping of a YAML config file (``{}`` for ``None``), or ConfigError saying why not."""
    import yaml

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found: pass an existing YAML file with --config")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {p} must hold a mapping of key: value, got {type(loaded).__name__}")
    return dict(loaded)


def build(cls: type[C], values: Mapping[str, Any]) -> C:
    """Validate a mapping into ``cls``; problems raise ConfigError naming the field and the fix."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, cls)) from None


def _seed_mappings(cls: type[BaseModel], values: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the default of every mapping setting that ``over`` changes key by key and ``values``
    does not set, so ``sources.news.dev=x`` edits the default ``sources`` instead of replacing it (a mapping
    given whole, in the YAML file, replaces the default)."""
    from pydantic_core import to_jsonable_python

    out = dict(values)
    for key, change in over.items():
        f = cls.model_fields.get(key)
        if f is None or not isinstance(change, Mapping):
            continue
        sub = _model_in(f.annotation)
        if sub is not None:
            if isinstance(out.get(key, {}), Mapping):
                out[key] = _seed_mappings(sub, dict(out.get(key) or {}), change)
        elif key not in out and _mapping_value(f.annotation) is not _NOT_MAPPING and not f.is_required():
            default = f.get_default(call_default_factory=True)
            if default:
                out[key] = to_jsonable_python(default)
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = (),
                extra: Mapping[str, Any] | None = None) -> C:
    """Defaults ← YAML file ← ``key=value`` overrides (← ``extra`` values), validated into ``cls``."""
    over = parse_overrides(overrides, cls)
    values = merge(_seed_mappings(cls, read_yaml_mapping(path), over), over)
    return build(cls, merge(values, extra or {}))


def replace(cfg: C, **changes: Any) -> C:
    """A validated copy of ``cfg`` with ``changes`` (what ``dataclasses.replace`` did; ``model_copy`` does
    not validate)."""
    return build(type(cfg), {**dict(cfg), **changes})


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A JSON/YAML-friendly dict of a config (Paths become strings, tuples lists, nested models dicts)."""
    return cfg.model_dump(mode="json")


def to_yaml(cfg: BaseModel) -> str:
    """The config as YAML that loads back unchanged through ``--config``."""
    import yaml

    return yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False, width=1000)


# ------------------------------------------------------------------------------------------- help
def _show(value: Any) -> str:
    import yaml
    from pydantic_core import to_jsonable_python

    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, allow_unicode=True, width=1000)
    return text.strip().removesuffix("...").strip()


def field_help(cls: type[BaseModel]) -> dict[str, str]:
    """``{field name: description}`` of a config class."""
    return {name: f.description or "" for name, f in cls.model_fields.items()}


def describe(cls: type[BaseModel], prefix: str = "") -> str:
    """Every field of ``cls`` (nested models too): ``  dotted.name = default   [type]`` and its description."""
    lines: list[str] = []
    for name, f in cls.model_fields.items():
        dotted = prefix + name
        default = "(required)" if f.is_required() else _show(f.get_default(call_default_factory=True))
        lines.append(f"  {dotted} = {default}   [{type_name(f.annotation)}]")
        lines += textwrap.wrap(f.description or "", width=104, initial_indent=" " * 6, subsequent_indent=" " * 6,
                               break_on_hyphens=False, break_long_words=False)
        sub = _model_in(f.annotation)
        if sub is not None:
            lines.append(describe(sub, prefix=f"{dotted}."))
        elif isinstance(value := _mapping_value(f.annotation), type) and issubclass(value, BaseModel):
            lines.append(describe(value, prefix=f"{dotted}.<name>."))
    return "\n".join(lines)


def help_config(cls: type[BaseModel], prog: str) -> str:
    """The ``--help-config`` text of a command."""
    doc = textwrap.dedent(cls.__doc__ or "").strip().splitlines()
    example = getattr(cls, "example_overrides", ())
    head = [f"{prog}: {cls.__name__}" + (f" — {doc[0]}" if doc else ""),
            "settings: defaults ← --config FILE.yaml ← key=value (nested keys with dots; values are YAML scalars)"]
    if example:
        head.append(f"example: {prog} {' '.join(example)}")
    return "\n".join(head) + "\n\n" + describe(cls)


# ------------------------------------------------------------------------------------------- command line
@dataclass(frozen=True)
class Alias:
    """A deprecated spelling of a setting, kept for one release.

    ``field`` is the dotted setting it writes. ``value`` is what a flag without an argument sets
    (``--resume`` → ``resume=true``); with ``value=None`` the flag takes an argument (``--model DIR``),
    optional when ``optional`` (``--serve [APP]``). A ``field`` ending in ``.`` (or empty) takes a
    ``key=value`` argument under that prefix (``-X sasl_mechanism=PLAIN`` → ``security.sasl_mechanism=PLAIN``,
    ``--set port=8001`` → ``port=8001``). With ``many`` the flag takes every following bare token as one
    list (``--data a.txt b.txt`` → ``data=[a.txt, b.txt]``).
    """

    field: str
    value: str | None = None
    optional: bool = False
    many: bool = False


def field_flag_aliases(cls: type[BaseModel], exclude: Iterable[str] = ()) -> dict[str, Alias]:
    """``--batch-size N`` for every field, ``--flag`` / ``--no-flag`` for booleans (old per-field flags)."""
    out: dict[str, Alias] = {}
    skip = set(exclude)
    for name, f in cls.model_fields.items():
        if name in skip or _model_in(f.annotation) is not None:
            continue
        flag = "--" + name.replace("_", "-")
        if _leaf_types(f.annotation) == {bool}:
            out[flag] = Alias(name, "true")
            out["--no-" + name.replace("_", "-")] = Alias(name, "false")
        else:
            out[flag] = Alias(name)
    return out


def _as_alias(target: str | Alias) -> Alias:
    if isinstance(target, Alias):
        return target
    field, eq, value = target.partition("=")
    return Alias(field, value if eq else None)


def _is_option(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
        return False
    except ValueError:
        return True


def parse_command(
    cls: type[C],
    argv: Sequence[str],
    *,
    prog: str,
    description: str | None = None,
    positional: str | None = None,
    aliases: Mapping[str, str | Alias] | None = None,
    default_config: str | Path | None = None,
) -> C:
    """The config of one command from its command line — the grammar every finsent command shares.

    ``argv``: ``[--config FILE.yaml] [key=value ...] [positional ...] [--help-config] [--print-config]``.
    ``positional`` names the list field that collects bare tokens (e.g. ``texts``); ``aliases`` maps old
    option spellings onto fields (each use logs a one-line deprecation note); ``default_config`` is the YAML
    used without ``--config`` (``--config none`` = the class defaults).

    ``--help-config`` and ``--print-config`` print and raise ``SystemExit(0)`` (like ``--help``); bad
    options exit 2 through argparse; bad settings raise :class:`ConfigError`. Run a command's ``main``
    through :func:`run_command` to turn both into exit codes.
    """
    doc = textwrap.dedent(cls.__doc__ or "").strip()
    example = " ".join(getattr(cls, "example_overrides", ())) or "key=value"
    epilog = (f"Settings: defaults <- --config FILE.yaml <- key=value overrides (nested keys with dots, values as "
              f"YAML scalars), e.g. {prog} {example}. {prog} --help-config lists every setting.")
    if positional:
        epilog += f" Bare arguments fill {positional}; put a text that looks like key=... after --."
    parser = argparse.ArgumentParser(prog=prog, description=description or doc, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", default=None if default_config is None else str(default_config),
                        help="YAML file of settings" + (f" (default: {default_config}; 'none' = the built-in "
                                                        "defaults)" if default_config else ""))
    parser.add_argument("--help-config", action="store_true",
                        help="list every setting (name, type, default, meaning) and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings as YAML (loadable with --config) and exit")
    if positional:
        parser.add_argument("inputs", nargs="*", metavar=positional.upper(),
                            help=cls.model_fields[positional].description)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings, see --help-config")

    table = {flag: _as_alias(t) for flag, t in (aliases or {}).items()}
    overrides: list[str] = []
    inputs: list[str] = []
    rest: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok == "--":
            inputs += tokens[i:]
            break
        if _is_option(tok):
            flag, eq, inline = tok.partition("=")
            if flag in table:
                alias = table[flag]
                if alias.many and not eq:
                    import yaml

                    items: list[str] = []
                    while i < len(tokens) and not _is_option(tokens[i]) and not OVERRIDE_RE.match(tokens[i]):
                        items.append(tokens[i])
                        i += 1
                    arg = yaml.safe_dump(items, default_flow_style=True, allow_unicode=True, width=10**6).strip()
                elif eq:
                    arg = inline
                elif alias.value is not None and not alias.optional:
                    arg = None
                elif i < len(tokens) and not _is_option(tokens[i]) and not (
                        alias.optional and OVERRIDE_RE.match(tokens[i])):
                    arg = tokens[i]
                    i += 1
                elif alias.optional or alias.value is not None:
                    arg = None
                else:
                    parser.error(f"{flag} needs a value (or write {alias.field}=VALUE)")
                if alias.field == "" or alias.field.endswith("."):
                    if arg is None or "=" not in arg:
                        parser.error(f"{flag} takes key=value, got {arg!r}")
                    setting = alias.field + arg
                else:
                    setting = f"{alias.field}={arg if arg is not None else alias.value}"
                log.warning("%s: %s is deprecated and goes in the next release; write %s", prog, flag, setting)
                overrides.append(setting)
                continue
            rest.append(tok)
            if flag == "--config" and not eq and i < len(tokens):
                rest.append(tokens[i])
                i += 1
            continue
        if OVERRIDE_RE.match(tok):
            overrides.append(tok)
        elif positional:
            inputs.append(tok)
        else:
            parser.error(f"unexpected argument {tok!r}: settings are key=value, e.g. {example} ({HELP_HINT})")
    args, unknown = parser.parse_known_args(rest)
    if unknown or args.overrides or (positional and args.inputs):
        parser.error(f"unrecognized arguments: {' '.join(unknown + args.overrides)} "
                     f"(settings are key=value; {HELP_HINT})")
    if args.help_config:
        print(help_config(cls, prog))
        raise SystemExit(0)
    path = None if args.config is None or str(args.config).lower() == "none" else args.config
    extra = {positional: inputs} if positional and inputs else None
    try:
        cfg = load_config(cls, path, overrides, extra)
    except ConfigError as e:
        if positional and str(e).startswith("unknown config key"):
            raise ConfigError(f"{e} (a {positional} value that contains '=' goes after --)") from None
        raise
    if args.print_config:
        print(to_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg


def run_command(prog: str, fn: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Exit code of ``fn(argv)``: its return value, 0/2 from ``--help``/``--help-config``/argparse errors,
    2 with ``<prog>: error: <message>`` on stderr for a :class:`FinsentError` (bad settings, missing files)."""
    try:
        return int(fn(list(argv)) or 0)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)
        return 1
    except FinsentError as e:
        log.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
