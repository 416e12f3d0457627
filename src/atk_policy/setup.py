from setuptools import find_packages, setup

package_name = "atk_policy"

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
    description="ATK keypoint selection and keypoint policy training, and the policy node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "atk-train = atk_policy.cli:main",
            "policy_node = atk_policy.policy_params:COMMAND.main",
        ],
    },
)
