"""ament_python packaging of dicom_or_bringup: modules, data files and console scripts."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'dicom_or_bringup'
# The launch files (standard ROS 2 launch YAML, read by `ros2 launch` and dicom_or_launch
# alike) and the rviz2 configuration live in the workspace's top-level launch/ and config/
# folders; installing them here lets `ros2 launch dicom_or_bringup <file>`, the launch files'
# own `$(find-pkg-share dicom_or_bringup)/launch/...` includes and
# `rviz2 -d $(ros2 pkg prefix ...)` find them.
workspace = os.path.join('..', '..')

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    # The or_status node's parameter schema, read by dicom_or_ros.params.
    package_data={package_name: ['*_parameters.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch',
         sorted(glob(os.path.join(workspace, 'launch', '*.launch.yaml')))),
        ('share/' + package_name + '/rviz',
         sorted(glob(os.path.join(workspace, 'config', '*.rviz')))),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dicom_or maintainers',
    maintainer_email='dicom-or@example.org',
    description='Launch files, rviz2 config and the OR demo of dicom_or',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'dicom_or_launch = dicom_or_bringup.launcher:main',
            'dicom_or_demo = dicom_or_bringup.demo:main',
            'or_status = dicom_or_bringup.status_node:main',
            'dicom_or_convert = dicom_or_bringup.convert_tool:main',
            'dicom_or_discovery_server = dicom_or_bringup.discovery_server:main',
        ],
    },
)
