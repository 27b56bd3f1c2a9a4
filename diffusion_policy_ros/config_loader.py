"""The one way a plain mapping (YAML, JSON, ROS parameters) becomes a dataclass config.

Every config of the package goes through `from_mapping`: policy configs and checkpoints
(core.config), training and distillation configs, dataset configs, the guard's config and the nodes'
parameters. So the rules are the same everywhere: an unknown key is an error naming it and the known
ones (a typo must fail loudly, not train or run the default); a missing required key is named; values
are checked against the field's type (an integer is a fine float, a string is not an integer; lists
become tuples where the field is a tuple); nested dataclasses are read recursively. Ranges and
cross-field rules stay in each dataclass's `__post_init__`, where they hold however it is built.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar('T')


class ConfigError(ValueError):
    """A config that cannot be used; the message names the source and the key."""


def from_mapping(cls: type[T], data: Any, source: str, key: str = '') -> T:
    """Dataclass `cls` from `data`. `source` (a file, 'PolicyConfig', 'parameter') and the dotted `key`
    of `data` inside it are what errors name: "train.yaml: unknown key(s) 'train.bach_size'; ...".
    Errors from the dataclass's own checks come back as ConfigError with the same prefix."""
    where = f'{source}: {key}' if key else source
    if not isinstance(data, Mapping):
        raise ConfigError(f'{where}: expected a mapping, got {type(data).__name__} {data!r}')
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        names = ', '.join(repr(_dotted(key, str(k))) for k in unknown)
        raise ConfigError(f'{source}: unknown key(s) {names}; known keys: {", ".join(sorted(fields))}')
    missing = [name for name, f in fields.items() if f.init and name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        names = ', '.join(repr(_dotted(key, name)) for name in missing)
        raise ConfigError(f'{source}: missing required key(s) {names}')
    hints = typing.get_type_hints(cls)
    values = {name: coerce(value, hints[name], source, _dotted(key, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:  # the dataclass's own checks
        raise ConfigError(f'{where}: {err}') from None


def coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """`value` as the type `hint` says, or ConfigError naming `key`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return coerce(value, options[0], source, key)
        return value  # a real union: the dataclass decides
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_mapping(hint, value, source, key)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f'{source}: {key}: {value!r} is not one of {list(args)}')
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):  # (rclpy arrays: array.array)
            raise ConfigError(f'{source}: {key}: expected a list, got {value!r}')
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [coerce(v, args[0], source, f'{key}[{i}]') for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f'{source}: {key}: expected {len(args)} values, got {list(value)}')
            items = [coerce(v, a, source, f'{key}[{i}]') for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [coerce(v, args[0], source, f'{key}[{i}]') if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    expected = _SCALARS.get(hint)
    if expected is None:
        return value  # Any, dict, ...: the dataclass decides
    if isinstance(value, expected) and not (isinstance(value, bool) and hint is not bool):
        return float(value) if hint is float else value
    raise ConfigError(f'{source}: {key}: expected {_NAMES[hint]}, got {value!r}')


_SCALARS: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}


def _dotted(key: str, name: str) -> str:
    return f'{key}.{name}' if key else name
