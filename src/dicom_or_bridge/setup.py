"""ament_python packaging of dicom_or_bridge: modules, data files and console scripts."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'dicom_or_bridge'
# Demo worklist items (dcmtk dump2dcm text dumps) ship with the package.
worklist_dir = os.path.join('..', '..', 'config', 'worklist')

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    # The nodes' parameter schemas beside their modules, read by dicom_or_ros.params.
    package_data={package_name: ['*_parameters.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/worklist', sorted(glob(os.path.join(worklist_dir,
                                                                         '*.dump')))),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dicom_or maintainers',
    maintainer_email='dicom-or@example.org',
    description='DICOM bridge of dicom_or: worklist context in, C-FIND over the live ROS '
                'graph, C-GET/C-MOVE of archived instances out',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'session_context = dicom_or_bridge.session_context_node:main',
            'dicom_bridge = dicom_or_bridge.bridge_node:main',
            'dicom_or_find = dicom_or_bridge.find_tool:main',
            'dicom_or_igtl_server = dicom_or_bridge.igtl_server_node:main',
            'dicom_or_foxglove = dicom_or_bridge.foxglove_bridge_node:main',
        ],
    },
)
