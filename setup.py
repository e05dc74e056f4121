"""ament_python package of genpolicy_ros (also pip-installable into a plain virtualenv)."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'genpolicy_ros'


def _files(pattern: str) -> list:
    return sorted(f for f in glob(pattern) if os.path.isfile(f))


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml'] + _files('plugin.xml')),
        ('share/' + PACKAGE + '/launch', _files('launch/*_launch.py')),
        ('share/' + PACKAGE + '/config', _files('config/*')),
        ('share/' + PACKAGE + '/urdf', _files('urdf/*')),
        ('share/' + PACKAGE + '/checkpoints', _files('checkpoints/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='genpolicy_ros developers',
    maintainer_email='genpolicy@example.com',
    description='Safe execution of generative robot policies: CBF-QP filter, runtime monitor.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            # ROS 2 nodes (ros2 run genpolicy_ros <name>)
            'sim_node = genpolicy_ros.nodes.sim_node:main',
            'policy_node = genpolicy_ros.nodes.policy_node:main',
            'safety_filter_node = genpolicy_ros.nodes.safety_filter_node:main',
            'monitor_node = genpolicy_ros.nodes.monitor_node:main',
            'driver_node = genpolicy_ros.nodes.driver_node:main',
            'camera_node = genpolicy_ros.nodes.camera_node:main',
            # Tools
            'genpolicy-sim = genpolicy_ros.bringup:main',
            'genpolicy-eval = genpolicy_ros.evaluation:main',
            'genpolicy-record-demos = genpolicy_ros.sim.record_demos:main',
            'genpolicy-rerender-demos = genpolicy_ros.sim.rerender_demos:main',
            'genpolicy-collect = genpolicy_ros.policy.collect:main',
            'genpolicy-train = genpolicy_ros.policy.train:main',
            'genpolicy-finetune = genpolicy_ros.policy.finetune:main',
            'genpolicy-calibrate = genpolicy_ros.evaluation:calibrate_main',
            'genpolicy-monitor-eval = genpolicy_ros.monitor_eval:main',
            'genpolicy-monitor-gui = genpolicy_ros.rqt.standalone:main',
            'genpolicy-report = genpolicy_ros.recording.report:main',
            'genpolicy-record = genpolicy_ros.recording.recorder:main',
            'genpolicy-franka-sim = genpolicy_ros.drivers.franka_sim_server:main',
        ],
    },
)
