"""Node parameters from one dataclass: the dataclass is the single source of truth for names, types
and defaults; the params files in config/ and the node's declared parameters both follow it, and the
values are read into it by `config_loader` (types checked there, ranges by the dataclass)."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from diffusion_policy_ros.config_loader import from_mapping

T = TypeVar('T')

_TYPES = {
    bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE,
    str: Parameter.Type.STRING, list[str]: Parameter.Type.STRING_ARRAY,
    list[float]: Parameter.Type.DOUBLE_ARRAY, list[int]: Parameter.Type.INTEGER_ARRAY,
    list[bool]: Parameter.Type.BOOL_ARRAY,
}


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f'parameter {field.name} needs a default')


def _unset_allowed(hint: Any) -> tuple[Any, bool]:
    """(the type, whether None - "unset" - is allowed) of a field hint such as `int | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def declare_parameters(node: Node, cls: type[T], skip: tuple[str, ...] = ()) -> T:
    """Declare every field of `cls` on `node` (typed, so empty lists work) and return their values.

    A field typed `X | None` with default None is declared by type and stays unset unless a params
    file or `-p` sets it: "unset" (the checkpoint's value, say) is then explicit, not a magic 0.
    Parameters the node was given that `cls` does not declare are refused (`unknown_given_parameters`)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        hint, optional = _unset_allowed(hints[field.name])
        param_type = _TYPES.get(hint)
        if param_type is None:
            raise TypeError(f'{cls.__name__}.{field.name}: unsupported parameter type {hints[field.name]}')
        default = _field_default(field)
        # Doubles are declared with dynamic typing so `-p rate:=10` (an integer on the command line)
        # is accepted and converted, instead of failing the whole node at start-up.
        by_type = (isinstance(default, list) and not default) or (optional and default is None)
        descriptor = ParameterDescriptor(description=field.metadata.get('help', ''),
                                         dynamic_typing=param_type is Parameter.Type.DOUBLE and not by_type)
        if by_type:  # (rclpy refuses dynamic typing with a declared type: `-p rate:=10` must then say 10.0)
            node.declare_parameter(field.name, param_type, descriptor)
        else:
            node.declare_parameter(field.name, default, descriptor)
        try:
            value = node.get_parameter(field.name).value
        except ParameterUninitializedException:  # declared by type and not set
            value = None
        if value is None and typing.get_origin(hint) is list and not optional:
            value = []  # (an empty array has no type in ROS: declared by type, it reads back unset)
        values[field.name] = value
    return from_mapping(cls, values, 'parameter')


def refuse_unknown_parameters(node: Node, cls: type) -> None:
    """ValueError naming every parameter the node was given that `cls` does not declare, and the known ones
    (ROS itself would silently ignore a misspelt name in a params file)."""
    unknown = unknown_given_parameters(node, cls)
    if unknown:
        raise ValueError(f'unknown parameter(s) {unknown}; {node.get_name()} knows '
                         f'{sorted(f.name for f in dataclasses.fields(cls))}')


def unknown_given_parameters(node: Node, cls: type, allowed_extra: tuple[str, ...] = ('use_sim_time',)) -> list[str]:
    """Names given to the node (params file, -p) that `cls` does not declare: typos, refused at configure."""
    overrides = node.get_node_options().parameter_overrides if hasattr(node, 'get_node_options') else []
    given = {p.name for p in overrides} | set(getattr(node, '_parameter_overrides', {}))
    names = {f.name for f in dataclasses.fields(cls)} | set(allowed_extra)
    return sorted(n for n in given - names if not n.startswith('qos_overrides.')
                  and n != 'start_type_description_service')


def load_params_file(path: str | Path, node_name: str) -> dict[str, Any]:
    """The `ros__parameters` of `node_name` in a ROS 2 params file (also matches `/**` wildcards)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    merged: dict[str, Any] = {}
    for key in ('/**', '**', node_name, '/' + node_name):
        section = data.get(key)
        if isinstance(section, dict):
            merged.update(section.get('ros__parameters', {}) or {})
    return merged


def unknown_parameters(params: dict[str, Any], cls: type, allowed_extra: tuple[str, ...] = ('use_sim_time',)) -> list[str]:
    names = {f.name for f in dataclasses.fields(cls)} | set(allowed_extra)
    return sorted(set(params) - names)


def declare_dynamic_parameters(node: Node, defaults: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Declare each of `defaults` ({name: (value, description)}) that the node has not declared yet, with
    dynamic typing: `-p max_joint_step:=1` (an integer) is then validated by the config dataclass
    (`config_loader`) instead of failing the whole node on a type mismatch. Returns every parameter the
    node has, by name (for a node that also takes names it cannot know in advance, as scene.<name>.*)."""
    for name, (value, help_text) in defaults.items():
        if not node.has_parameter(name):
            node.declare_parameter(name, value, ParameterDescriptor(description=help_text, dynamic_typing=True))
    return {name: node.get_parameter(name).value for name in node.list_parameters([], 0).names}
