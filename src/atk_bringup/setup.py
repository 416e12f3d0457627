from glob import glob

from setuptools import find_packages, setup

package_name = "atk_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/config/manual_keypoints", glob("config/manual_keypoints/*.json")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="atk-ros developers",
    maintainer_email="atk-ros@example.com",
    description="Launch and parameter files, UR5e driver, MuJoCo simulation, recorder, end-to-end loop.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ur_driver_node = atk_bringup.driver.driver_params:COMMAND.main",
            "sim_node = atk_bringup.sim_params:COMMAND.main",
            "recorder_node = atk_bringup.recorder_params:COMMAND.main",
            "atk-graph = atk_bringup.graph_tools.runner:main",
            "atk-sim-pictures = atk_bringup.sim.pictures:main",
            "atk-demo = atk_bringup.experiment.demo:main",
            "atk-calibrate = atk_bringup.calibrate:main",
        ],
        # the privileged, simulation-only ground truth behind atk_perception's
        # "oracle" h_C (perception cannot import this package)
        "atk_perception.ground_truth": [
            "sim = atk_bringup.sim.ground_truth:make_source",
        ],
    },
)
