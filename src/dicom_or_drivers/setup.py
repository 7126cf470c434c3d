"""ament_python packaging of dicom_or_drivers: modules, data files and console scripts."""

from setuptools import find_packages, setup

package_name = 'dicom_or_drivers'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    # The nodes' parameter schemas beside their modules, read by dicom_or_ros.params.
    package_data={package_name: ['*_parameters.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dicom_or maintainers',
    maintainer_email='dicom-or@example.org',
    description='OR device drivers publishing DICOM-context video, pose and waveform streams',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'video_driver = dicom_or_drivers.video_node:main',
            'tracker_driver = dicom_or_drivers.tracker_node:main',
            'waveform_driver = dicom_or_drivers.waveform_node:main',
            'dicom_or_replay = dicom_or_drivers.replay_node:main',
        ],
    },
)
