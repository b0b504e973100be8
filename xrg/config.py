"""Typed run configurations: built from a profile section, saved in checkpoints as plain dicts.

Every run kind has one ``@dataclass`` config. A profile's section (``xraygan:``, ``vcn:``)
and command-line overrides fill it (:func:`config_from_mapping`); a checkpoint stores it as
plain JSON-like values (:func:`config_to_dict`), so it loads with ``torch.load(...,
weights_only=True)``; :func:`config_differences` names the fields in which two differ.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from xrg.errors import ConfigError

ConfigT = TypeVar("ConfigT")


def config_from_mapping(cls: type[ConfigT], values: Mapping[str, Any], where: str = "config") -> ConfigT:
    """Build ``cls`` from a mapping; unknown keys are a :class:`ConfigError` naming them.

    Values are checked against the field types: lists become tuples for tuple-typed fields
    (YAML and JSON have no tuples) and numbers or numeric strings become floats for float
    fields (YAML reads ``1e-4`` as a string). The dataclass checks ranges in ``__post_init__``.
    """
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown}; known settings are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    converted = {name: _coerce(value, hints[name], f"{where}: {name}") for name, value in values.items()}
    return cls(**converted)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotated type: ints and numeric strings ("1e-4") become floats, lists tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        others = [arg for arg in args if arg is not type(None)]
        return _coerce(value, others[0], where) if len(others) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        element_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(element_types) != len(value):
            raise ConfigError(f"{where} must have {len(element_types)} values, got {list(value)}")
        return tuple(_coerce(v, t, where) for v, t in zip(value, element_types))
    if hint is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is float or hint in (int, str, bool):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain values (tuples as lists), as stored in checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return {field.name: plain(getattr(config, field.name)) for field in dataclasses.fields(config)}


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"name: stored → current"`` for every field whose value differs (or exists in one only)."""
    lines = []
    for name in sorted(set(stored) | set(current)):
        old, new = stored.get(name, _ABSENT), current.get(name, _ABSENT)
        if old != new:
            lines.append(f"{name}: {_show(old)} → {_show(new)}")
    return lines


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["vc_weight=0", "lr=[1e-4, 1e-4]"]`` → ``{"vc_weight": 0, "lr": [1e-4, 1e-4]}`` (values read as YAML)."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like KEY=VALUE, e.g. vc_weight=0")
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        except RecursionError as exc:
            raise ConfigError(f"override {item[:40]!r}...: value nests too deeply") from exc
    return overrides
