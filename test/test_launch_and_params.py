"""Launch files and params files stay consistent with the code (checked statically: launch_ros is
not installable here, so `bringup` runs the same nodes from the same files)."""
import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))


def console_scripts() -> set[str]:
    tree = ast.parse((ROOT / 'setup.py').read_text())
    return {n.value.split('=')[0].strip() for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and ' = ' in n.value}


def launch_nodes(path: Path) -> list[dict]:
    nodes = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', None) == 'Node':
            kwargs = {k.arg: k.value for k in call.keywords}
            nodes.append({k: v.value for k, v in kwargs.items() if isinstance(v, ast.Constant)})
    return nodes


def config_files_named(path: Path) -> list[str]:
    """Every os.path.join(config, 'DIR', ..., 'NAME') in a launch file, as 'DIR/.../NAME'."""
    names = []
    for call in ast.walk(ast.parse(path.read_text())):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == 'join'
                and call.args and getattr(call.args[0], 'id', None) == 'config'):
            names.append('/'.join(a.value for a in call.args[1:] if isinstance(a, ast.Constant)))
    return names


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_apply_the_shipped_dds_profile(path):
    assert 'dds/fastdds.xml' in config_files_named(path)
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' in path.read_text()


def test_there_are_launch_files_for_robot_and_sim():
    assert {p.name for p in LAUNCH_FILES} >= {'policy.launch.py', 'sim.launch.py'}


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_existing_executables_and_params_files(path):
    scripts = console_scripts()
    nodes = launch_nodes(path)
    assert nodes, f'{path.name} starts no Node'
    for node in nodes:
        assert node['package'] == 'diffusion_policy_ros'
        assert node['executable'] in scripts, f'{path.name}: no executable {node["executable"]}'
    files = config_files_named(path)
    assert files
    for name in files:
        assert (ROOT / 'config' / name).is_file(), f'{path.name} names config/{name}, which does not exist'


@pytest.mark.parametrize('config', sorted((ROOT / 'config').glob('*.yaml')), ids=lambda p: p.name)
def test_params_files_name_only_parameters_the_nodes_declare(config):
    """A typo in a params file would be silently ignored by ROS: catch it here."""
    from diffusion_policy_ros.nodes.bringup import NODES
    from diffusion_policy_ros.nodes.params import load_params_file, unknown_parameters
    data = yaml.safe_load(config.read_text()) or {}
    for node_name in set(data) & set(NODES):
        module = __import__(NODES[node_name][0], fromlist=['PARAMS'])
        params = load_params_file(config, node_name)
        flat = {k.split('.')[0]: v for k, v in params.items()}
        assert unknown_parameters(flat, module.PARAMS) == [], f'{config.name}: {node_name}'


def test_bringup_files_list_known_nodes_with_existing_params_files():
    from diffusion_policy_ros.nodes.bringup import plan_bringup
    for name in ('sim.yaml', 'robot.yaml'):
        path = ROOT / 'config' / name
        if not path.exists():
            continue
        launches = plan_bringup(path)
        assert launches
        for launch in launches:
            assert all(f.is_file() for f in launch.params_files)
            module = launch.command()[2]
            assert importlib.util.find_spec(module) is not None, module
