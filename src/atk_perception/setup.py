from setuptools import find_packages, setup

package_name = "atk_perception"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="atk-ros developers",
    maintainer_email="atk-ros@example.com",
    description="Correspondence function h_C, camera node and keypoint tracker node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "camera_node = atk_perception.camera_params:COMMAND.main",
            "tracker_node = atk_perception.tracker_params:COMMAND.main",
        ],
    },
)
