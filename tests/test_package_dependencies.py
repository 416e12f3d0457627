"""Issue 14: each package.xml declares what its library code imports, and no
workspace package it does not import.

A ROS install resolves packages from package.xml (rosdep, colcon's build
order, the docker image), so an import that package.xml does not declare
works here only because the whole workspace happens to be installed.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON_PACKAGES = ["atk_perception", "atk_policy", "atk_bringup"]
WORKSPACE_PACKAGES = {"atk_msgs", *PYTHON_PACKAGES}
# ROS packages imported by their package name (besides *_msgs / *_srvs / *_interfaces).
ROS_PACKAGES = {"rclpy", "launch", "launch_ros", "ament_index_python", "cv_bridge"}
# Python modules whose rosdep key differs from the module name.
ROSDEP_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "torch": "python3-torch", "scipy": "python3-scipy",
               "yaml": "python3-yaml"}
# Imported only inside try/except with a fallback, so not a dependency.
OPTIONAL = {"cv_bridge": "image_conversion falls back to numpy when it is missing (PyPI ROS has no cv_bridge)"}
DEPEND_TAGS = ("depend", "exec_depend", "build_export_depend")


def imported_modules(package: str, root: Path = ROOT) -> set[str]:
    """Top-level module names imported anywhere in the library (not its tests)."""
    mods: set[str] = set()
    for f in (root / "src" / package / package).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods


def required_keys(package: str, root: Path = ROOT) -> set[str]:
    """package.xml keys that the imports of `package` require."""
    keys = set()
    for mod in imported_modules(package, root) - {package}:
        if mod in OPTIONAL:
            continue
        if mod in WORKSPACE_PACKAGES or mod in ROS_PACKAGES or re.search(r"_(msgs|srvs|interfaces)$", mod):
            keys.add(mod)
        elif mod in ROSDEP_KEYS:
            keys.add(ROSDEP_KEYS[mod])
    return keys


def declared(package: str, root: Path = ROOT) -> set[str]:
    xml = ET.parse(root / "src" / package / "package.xml").getroot()
    return {e.text.strip() for tag in DEPEND_TAGS for e in xml.iter(tag) if e.text}


@pytest.mark.parametrize("package", PYTHON_PACKAGES)
def test_package_xml_declares_every_import(package):
    missing = required_keys(package) - declared(package)
    assert not missing, f"src/{package}/package.xml does not declare {sorted(missing)}, which its code imports"


@pytest.mark.parametrize("package", PYTHON_PACKAGES)
def test_package_xml_declares_no_unused_workspace_package(package):
    stale = (declared(package) & WORKSPACE_PACKAGES) - imported_modules(package)
    assert not stale, f"src/{package}/package.xml declares {sorted(stale)}, which its code never imports"


def test_checker_sees_a_missing_declaration(tmp_path):
    """The check can fail: an undeclared workspace import is reported."""
    pkg = tmp_path / "src" / "atk_demo_pkg"
    (pkg / "atk_demo_pkg").mkdir(parents=True)
    (pkg / "atk_demo_pkg" / "m.py").write_text("import numpy\nfrom atk_perception import kinematics\n")
    (pkg / "package.xml").write_text("<package><exec_depend>python3-numpy</exec_depend></package>")
    assert required_keys("atk_demo_pkg", tmp_path) - declared("atk_demo_pkg", tmp_path) == {"atk_perception"}
