"""Typed configs: dataclasses that validate themselves on load.

Every config in lmforge is a keyword-only dataclass deriving from `Config`. Loading one
from a dict (parsed YAML, a checkpoint's saved config, dotted command-line overrides)
goes through `Config.from_dict`, which

* rejects unknown fields, naming the field and suggesting the closest valid one,
* checks and coerces each value against the field's type annotation,
* runs the class's `validate()` so range checks live next to the fields they check.

All failures raise `ConfigError` with the dotted path of the field (``model.n_heads``),
so a user can find the line in their YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from lmforge.errors import ConfigError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(kw_only=True)
class Config:
    """Base class for all lmforge configs (a kw-only dataclass with validation)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Range and consistency checks; subclasses raise `ConfigError` naming the field."""

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, where: str = "") -> C:
        """Build from plain data, checking names and types. `where` prefixes error paths."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where.rstrip('.') or cls.__name__}: expected a mapping, got {data!r}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in data:
            if key not in fields:
                raise ConfigError(unknown_field_message(f"{where}{key}", key, fields, cls.__name__))
        hints = typing.get_type_hints(cls)
        kwargs = {name: coerce(value, hints[name], f"{where}{name}") for name, value in data.items()}
        missing = [n for n, f in fields.items() if n not in kwargs and _is_required(f)]
        if missing:
            raise ConfigError(f"{where}{missing[0]}: required field of {cls.__name__} is missing")
        try:
            return cls(**kwargs)
        except ConfigError as e:
            if where and not str(e).startswith(where):
                raise ConfigError(f"{where}{e}") from None
            raise

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, overrides: Iterable[str] = ()) -> C:
        """Load a YAML file, apply ``section.field=value`` overrides, validate."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
        return cls.from_dict(apply_overrides(data, overrides))

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-safe) that `from_dict` turns back into an equal config."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def unknown_field_message(path: str, key: str, valid: Iterable[str], owner: str) -> str:
    """'unknown field x.y; did you mean ...? valid fields: ...' with the closest match first."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{path}: unknown field of {owner}{hint} (valid fields: {', '.join(valid)})"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`, converting where it is lossless (int → float,
    '1e-3' → 0.001, 'x.yaml' → Path). Raises ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if value is None:
        raise ConfigError(f"{where}: must not be null (expected {_type_name(tp)})")
    if origin is Literal:
        if value in args:
            return value
        allowed = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {allowed}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or value == member.name or value is member:
                return member
        allowed = ", ".join(repr(m.value) for m in tp)
        raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {allowed}")
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        return tp.from_dict(value, where=f"{where}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        number = _as_number(value)
        if number is not None and float(number).is_integer():
            return int(number)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        number = _as_number(value)
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(number)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single item where a list is expected is a list of one
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed-length tuple[A, B, ...]
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items ({_type_name(tp)}), got {value!r}")
            return tuple(coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = args or (Any, Any)
        return {coerce(k, key_tp, f"{where}"): coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"config annotation {tp!r} at {where} is not supported")  # a bug, not a user error


def _as_number(value: Any) -> float | int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to nested dict `data` (copied)."""
    result = _deep_copy(data)
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --section.field=value")
        dotted, raw = text.split("=", 1)
        keys = dotted.split(".")
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{key}' is not a section")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            node[keys[-1]] = raw
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def require(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError('field: message') unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
