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


def config_from_mapping(
    cls: type[ConfigT], values: Mapping[str, Any], where: str = "config", prefix: str = ""
) -> ConfigT:
    """Build ``cls`` from a mapping; unknown keys are a :class:`ConfigError` naming them.

    A field typed as a dataclass (a run config's ``model``) is built from a nested mapping the
    same way; errors name the full dotted key, ``prefix`` first (``xraygan.model.hidden``).
    Values are checked against the field types: lists become tuples for tuple-typed fields
    (YAML and JSON have no tuples) and numbers or numeric strings become floats for float
    fields (YAML reads ``1e-4`` as a string). The dataclass checks ranges in ``__post_init__``.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: {prefix or 'settings'} must be a mapping of settings, got {values!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hints = typing.get_type_hints(cls)
        nested = {
            name: f"{group}.{name}"
            for group in fields
            if dataclasses.is_dataclass(hints[group])
            for name in (field.name for field in dataclasses.fields(hints[group]))
        }
        moved = [
            f"{_dotted(prefix, name)} is now {_dotted(prefix, nested[name])}" for name in unknown if name in nested
        ]
        hint = f" ({'; '.join(moved)})" if moved else ""
        raise ConfigError(
            f"{where}: unknown settings {[_dotted(prefix, name) for name in unknown]}{hint}; "
            f"known settings{f' of {prefix}' if prefix else ''} are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    converted = {}
    for name, value in values.items():
        key = _dotted(prefix, name)
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            if isinstance(value, hint):
                converted[name] = value
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {key} must be a mapping of settings, got {value!r}")
            try:
                converted[name] = config_from_mapping(hint, value, where, key)
            except ConfigError as exc:
                message = str(exc)
                raise ConfigError(
                    message if message.startswith(f"{where}: ") else f"{where}: {key}: {message}"
                ) from exc
            continue
        converted[name] = _coerce(value, hint, f"{where}: {key}")
    return cls(**converted)


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def merge_settings(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by each of ``overrides`` in turn; nested mappings merge key by key.

    A dotted key (``"model.hidden"``, as ``--set`` gives it) is the same as the nested
    ``{"model": {"hidden": ...}}``. Nothing is checked here: :func:`config_from_mapping`
    refuses the keys its dataclass does not know.
    """
    merged = merge_settings_into({}, base)
    for source in overrides:
        merge_settings_into(merged, source)
    return merged


def merge_settings_into(target: dict[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``source`` into ``target`` in place (see :func:`merge_settings`); nested mappings are copied."""
    for key, value in source.items():
        head, dot, rest = str(key).partition(".")
        if dot and head and rest:
            value, key = {rest: value}, head
        if isinstance(value, Mapping):
            existing = target.get(key)
            target[key] = merge_settings_into(dict(existing) if isinstance(existing, Mapping) else {}, value)
        else:
            target[key] = value
    return target


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
    """The config as plain values (tuples as lists, a nested config as a dict), as stored in checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return config_to_dict(value)
        return value

    return {field.name: plain(getattr(config, field.name)) for field in dataclasses.fields(config)}


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def config_differences(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    prefix: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """``"name: stored → current"`` for every field whose value differs (or exists in one only).

    Nested configs are compared field by field and named by their dotted keys (``model.hidden``).
    With ``defaults`` (the config class's default values, as a dict), a field the stored config
    lacks is no difference while the current value is its default: such a field was added
    later, and its default is the behaviour the stored config was written with.
    """
    lines = []
    for name in sorted(set(stored) | set(current)):
        old, new = stored.get(name, _ABSENT), current.get(name, _ABSENT)
        default = defaults.get(name, _ABSENT) if isinstance(defaults, Mapping) else _ABSENT
        key = _dotted(prefix, str(name))
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            lines += config_differences(old, new, key, default if isinstance(default, Mapping) else None)
        elif old is _ABSENT and default is not _ABSENT and new == default:
            continue
        elif old != new:
            lines.append(f"{key}: {_show(old)} → {_show(new)}")
    return lines


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["vc_weight=0", "model.hidden=32"]`` → ``{"vc_weight": 0, "model": {"hidden": 32}}`` (values read as YAML).

    A dotted key sets a setting of a nested config (``model.hidden``; for the baselines also
    ``attngan.kl_weight``); :func:`config_from_mapping` refuses keys its config does not know.
    """
    import yaml

    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like KEY=VALUE, e.g. vc_weight=0 or model.hidden=32")
        if any(not part.strip() for part in key.split(".")):
            raise ConfigError(f"override {item!r}: {key!r} is not a setting name (dotted keys look like model.hidden)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        except RecursionError as exc:
            raise ConfigError(f"override {item[:40]!r}...: value nests too deeply") from exc
        merge_settings_into(overrides, {key: value})
    return overrides
