import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'dicom_or_core'
# The workspace's top-level config/ is shared by every package; installing it here gives
# every node (and a distro user) one place to find it: share/dicom_or_core/config.
workspace_config = os.path.join('..', '..', 'config')

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/config',
         sorted(glob(os.path.join(workspace_config, '*.yaml'))
                + glob(os.path.join(workspace_config, '*.xml')))),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dicom_or maintainers',
    maintainer_email='dicom-or@example.org',
    description='ROS-free DICOM core of dicom_or',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
)
