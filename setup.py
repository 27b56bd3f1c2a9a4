"""ament_python package definition: installs the library, data files and executables."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'diffusion_policy_ros'


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """Data-file entries that reproduce `folder` (recursively) under share/<pkg>/."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        paths = [os.path.join(root, f) for f in files if not f.startswith('.')]
        if paths:
            entries.append((os.path.join('share', PACKAGE, root), paths))
    return entries


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        *tree('config'),
        *tree('models'),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='diffusion_policy_ros maintainers',
    maintainer_email='maintainers@diffusion-policy-ros.dev',
    description='Diffusion policy for robot arms on ROS 2',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'dp-ros = diffusion_policy_ros.cli:main',
            'policy_node = diffusion_policy_ros.nodes.policy_node:main',
            'bringup = diffusion_policy_ros.nodes.bringup:main',
            'sim_robot_node = diffusion_policy_ros.nodes.sim_robot_node:main',
            'collision_guard_node = diffusion_policy_ros.nodes.collision_guard_node:main',
        ],
    },
)
