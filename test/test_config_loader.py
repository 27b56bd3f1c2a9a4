"""One loader turns every mapping (YAML, JSON, ROS parameters) into a config dataclass, with the same
errors everywhere: unknown and missing keys by their dotted name, wrong types by key."""
import array
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from diffusion_policy_ros.collision.config import CollisionGuardConfig, GuardNodeParams
from diffusion_policy_ros.config_loader import ConfigError, from_mapping
from diffusion_policy_ros.core.config import PolicyConfig
from diffusion_policy_ros.data.convert import dataset_config_from_dict
from diffusion_policy_ros.training.config import TrainConfig


@dataclass
class Inner:
    size: tuple[int, int] = (1, 2)
    mode: Literal['a', 'b'] = 'a'


@dataclass
class Outer:
    name: str
    rate: float = 1.0
    steps: int = 3
    enabled: bool = True
    inner: Inner = field(default_factory=Inner)
    gains: tuple[float, ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f'rate must be > 0, got {self.rate}')


def test_a_good_mapping_becomes_the_dataclass_with_json_lists_as_tuples_and_ints_as_floats():
    cfg = from_mapping(Outer, {'name': 'x', 'rate': 2, 'inner': {'size': [3, 4], 'mode': 'b'},
                               'gains': array.array('d', [0.5, 1.0]), 'label': None}, 'test')
    assert cfg == Outer('x', 2.0, 3, True, Inner((3, 4), 'b'), (0.5, 1.0), None)
    assert isinstance(cfg.rate, float) and isinstance(cfg.inner.size, tuple)


@pytest.mark.parametrize('data, message', [
    ({'name': 'x', 'rat': 1.0}, "params.yaml: unknown key(s) 'rat'; known keys: enabled, gains, inner"),
    ({'name': 'x', 'inner': {'sise': [1, 2]}}, "params.yaml: unknown key(s) 'inner.sise'"),
    ({'rate': 1.0}, "params.yaml: missing required key(s) 'name'"),
    ({'name': 'x', 'steps': 2.5}, 'params.yaml: steps: expected an integer, got 2.5'),
    ({'name': 'x', 'steps': True}, 'params.yaml: steps: expected an integer, got True'),
    ({'name': 'x', 'enabled': 1}, 'params.yaml: enabled: expected true or false, got 1'),
    ({'name': 'x', 'rate': 'fast'}, "params.yaml: rate: expected a number, got 'fast'"),
    ({'name': 7}, 'params.yaml: name: expected a string, got 7'),
    ({'name': 'x', 'inner': {'mode': 'c'}}, "params.yaml: inner.mode: 'c' is not one of ['a', 'b']"),
    ({'name': 'x', 'inner': {'size': [1]}}, 'params.yaml: inner.size: expected 2 values, got [1]'),
    ({'name': 'x', 'gains': [1.0, 'x']}, "params.yaml: gains[1]: expected a number, got 'x'"),
    ({'name': 'x', 'gains': 'abc'}, "params.yaml: gains: expected a list, got 'abc'"),
    ({'name': 'x', 'inner': 3}, 'params.yaml: inner: expected a mapping, got int 3'),
    ({'name': 'x', 'rate': -1}, 'params.yaml: rate must be > 0, got -1.0'),
])
def test_every_problem_names_its_source_and_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_mapping(Outer, data, 'params.yaml')
    assert str(err.value).startswith(message), str(err.value)


def test_every_config_of_the_package_goes_through_it():
    """The same wrong type is refused with the same words by the policy, training, dataset and guard
    configs and by the guard node's parameters."""
    cases = [
        (lambda: PolicyConfig.from_dict({'horizon': '16'}), 'horizon: expected an integer'),
        (lambda: TrainConfig.from_dict(yaml.safe_load('train: {steps: many}'), source='t.yaml'),
         "train.steps: expected an integer, got 'many'"),
        (lambda: dataset_config_from_dict({'cameras': [{'topic': '/c', 'key': 'cam'}], 'joint_names': ['a'],
                                           'max_gap_s': 'long'}, 'd.yaml'), "max_gap_s: expected a number"),
        (lambda: CollisionGuardConfig.from_ros_parameters({'padding': 'wide'}), 'padding: expected a number'),
        (lambda: GuardNodeParams.from_ros_parameters({'autostart': 'yes'}), 'autostart: expected true or false'),
    ]
    for build, words in cases:
        with pytest.raises(ConfigError, match=words.replace('(', r'\(')):
            build()
