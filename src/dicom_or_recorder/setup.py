"""ament_python packaging of dicom_or_recorder: modules, data files and console scripts."""

from setuptools import find_packages, setup

package_name = 'dicom_or_recorder'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    # The parameter schema beside the node module, read by dicom_or_ros.params.
    package_data={package_name: ['*_parameters.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dicom_or maintainers',
    maintainer_email='dicom-or@example.org',
    description='Recorder: stream topics into DICOM instances, spooled and stored to a PACS',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'recorder = dicom_or_recorder.recorder_node:main',
        ],
    },
)
