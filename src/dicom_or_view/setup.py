"""ament_python packaging of dicom_or_view: the OR view node and its web page."""

from setuptools import find_packages, setup

package_name = 'dicom_or_view'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    # The node's parameter schema and the page (plain HTML / CSS / JS, no build step, no
    # CDN) ship inside the Python package: the node serves them from there.
    package_data={package_name: ['*_parameters.yaml', 'web/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='dicom_or maintainers',
    maintainer_email='dicom-or@example.org',
    description='The OR view of dicom_or: live streams, their DICOM context and the '
                'archive state in any browser',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'dicom_or_view = dicom_or_view.or_view_node:main',
        ],
    },
)
