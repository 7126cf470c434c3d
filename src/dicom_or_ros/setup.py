"""ament_python packaging of dicom_or_ros: modules, data files and console scripts."""

from setuptools import find_packages, setup

package_name = 'dicom_or_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dicom_or maintainers',
    maintainer_email='dicom-or@example.org',
    description='ROS 2 glue shared by dicom_or nodes',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
)
