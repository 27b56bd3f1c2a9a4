"""The package is what colcon and a ROS robot expect: metadata, data files, executables, CLI."""
import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_declares_runtime_and_test_dependencies():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'diffusion_policy_ros'
    exec_deps = {e.text for e in root.findall('exec_depend')}
    for dep in ('rclpy', 'sensor_msgs', 'trajectory_msgs', 'std_msgs', 'std_srvs',
                'diagnostic_msgs', 'lifecycle_msgs', 'launch_ros'):
        assert dep in exec_deps, dep
    assert 'python3-pytest' in {e.text for e in root.findall('test_depend')}
    assert root.find('export/build_type').text == 'ament_python'


def test_core_modules_import_no_rclpy():
    """DESIGN rule: core/, control/, data/, collision/, sim/, training/ never import rclpy, nor do the
    shared modules they use (diagnostics, scheduling, worker threads)."""
    offenders = []
    package = ROOT / 'diffusion_policy_ros'
    shared = [package / f'{name}.py' for name in ('diagnostics', 'scheduling', 'worker_thread', 'errors', 'jsonio')]
    for paths in [*((package / area).rglob('*.py') for area in ('core', 'control', 'data', 'collision', 'sim',
                                                                  'training')), shared]:
        for path in paths:
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n.split('.')[0] in ('rclpy', 'launch', 'launch_ros') for n in names):
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_console_scripts_resolve():
    """Every executable setup.py declares points at an importable function."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    scripts = [n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and ' = ' in n.value]
    assert any(s.startswith('dp-ros =') for s in scripts)
    for script in scripts:
        _name, target = (s.strip() for s in script.split('='))
        module, func = target.split(':')
        code = f'import importlib; assert callable(getattr(importlib.import_module({module!r}), {func!r}))'
        subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_cli_lists_its_commands():
    out = subprocess.run([sys.executable, '-m', 'diffusion_policy_ros.cli', '--help'],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert 'COMMAND' in out.stdout


def test_core_depends_on_nothing_above_it():
    """core/ (networks, samplers, checkpoints) is the bottom layer: it never imports control, data,
    training, collision, sim or nodes, not even inside a function."""
    above = {'control', 'data', 'training', 'collision', 'sim', 'nodes'}
    offenders = []
    for path in (ROOT / 'diffusion_policy_ros' / 'core').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split('.')
                package = parts[0] if node.level == 2 else (parts[1] if parts[0] == 'diffusion_policy_ros' else '')
                if package in above:
                    offenders.append(f'{path.relative_to(ROOT)}:{node.lineno} {node.module}')
    assert offenders == []


def test_the_guard_and_the_sim_node_load_no_pytorch():
    """Neither the collision guard nor the sim needs PyTorch: importing it costs them ~170 MB of RSS and
    ~2.6 s of start-up. A package __init__ that imports `core` eagerly would bring it back."""
    for module in ('diffusion_policy_ros.nodes.collision_guard_node', 'diffusion_policy_ros.nodes.sim_robot_node'):
        code = f'import sys, {module}; print(sorted(m for m in ("torch", "zarr") if m in sys.modules))'
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == '[]', f'{module} imports {out.stdout.strip()}'
