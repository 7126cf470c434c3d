"""ament_python packaging of dicom_or_core: modules, data files and console scripts."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'dicom_or_core'
# The workspace's top-level config/ is shared by every package; installing it here gives
# every node (and a distro user) one place to find it: share/dicom_or_core/config.
workspace_config = os.path.join('..', '..', 'config')


def config_files():
    """Every file of config/ and its sub-folders (e.g. worklist/), keeping the layout."""
    found = {}
    for path in sorted(glob(os.path.join(workspace_config, '**', '*'), recursive=True)):
        if os.path.isfile(path):
            folder = os.path.relpath(os.path.dirname(path), workspace_config)
            target = os.path.normpath(os.path.join('share', package_name, 'config', folder))
            found.setdefault(target, []).append(path)
    return sorted(found.items())

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ] + config_files(),
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dicom_or maintainers',
    maintainer_email='dicom-or@example.org',
    description='ROS-free DICOM core of dicom_or',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
)
