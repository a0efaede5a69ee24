"""Plain YAML data -> nested dataclasses, type-checked against their annotations.

Errors are ValueErrors that name the field path (`tasks[1].data.train`); unknown keys are errors.
"""

import dataclasses
import types
import typing
from typing import Any, Union


def path_error(path: str, message: str) -> ValueError:
    return ValueError(f"{path or 'config'}: {message}")


def from_dict(cls: type, data: Any, path: str):
    """Build dataclass `cls` from a mapping, checking every field's type; `path` prefixes errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise path_error(path, f"must be a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - set(known))
    if unknown:
        raise path_error(_join(path, unknown[0]), f"unknown key; known keys: {sorted(known)}")
    values = {}
    for name, f in known.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise path_error(_join(path, name), "is required")
    return cls(**values)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert(hint, value, path: str):
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise path_error(path, "must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except ValueError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise path_error(path, f"must be a list, got {type(value).__name__} {value!r}")
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise path_error(path, f"must be a list of {len(items)}, got {value!r}")
        return tuple(_convert(t, v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(items, value)))
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise path_error(path, f"must be a mapping, got {type(value).__name__} {value!r}")
        return {_convert(key_type, k, path): _convert(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise path_error(path, f"must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise path_error(path, f"must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise path_error(path, f"must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise path_error(path, f"must be a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{path}: unsupported annotation {hint!r}")
