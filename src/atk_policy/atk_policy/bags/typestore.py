"""Type store: ROS 2 message definitions (the distro's plus atk_msgs), and
types a bag carries that the store lacks."""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Literal

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from .common import BagError


def find_atk_msgs_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Folder holding atk_msgs' ``*.msg`` files, found without ament_index.

    Looked up in this order: ``explicit``; ``$ATK_MSGS_DIR``;
    ``<prefix>/share/atk_msgs/msg`` for each prefix of ``$AMENT_PREFIX_PATH``
    (where colcon installs them); the share folder next to the importable
    ``atk_msgs`` Python package (found with importlib, not imported); the
    source tree ``src/atk_msgs/msg`` next to this package. Raises BagError
    listing every place tried.
    """
    tried: list[str] = []

    def ok(p: Path) -> bool:
        tried.append(str(p))
        return p.is_dir() and any(p.glob("*.msg"))

    if explicit is not None:
        p = Path(explicit)
        if ok(p):
            return p
        raise BagError(f"atk_msgs message folder {str(p)!r} has no *.msg files")
    env = os.environ.get("ATK_MSGS_DIR")
    if env and ok(Path(env)):
        return Path(env)
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        p = Path(prefix) / "share" / "atk_msgs" / "msg"
        if ok(p):
            return p
    try:
        spec = importlib.util.find_spec("atk_msgs")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        # <prefix>/lib/pythonX.Y/site-packages/atk_msgs -> <prefix>/share/atk_msgs/msg
        p = Path(loc).resolve().parents[3] / "share" / "atk_msgs" / "msg"
        if ok(p):
            return p
    here = Path(__file__).resolve()
    for parent in here.parents:
        p = parent / "atk_msgs" / "msg"
        if ok(p):
            return p
        p = parent / "src" / "atk_msgs" / "msg"
        if ok(p):
            return p
    raise BagError("cannot find the atk_msgs *.msg files; tried: " + ", ".join(tried)
                   + ". Build the workspace (colcon build) or set ATK_MSGS_DIR to src/atk_msgs/msg.")


_TYPESTORES: dict[str, Typestore] = {}
_TYPESTORE_LOCK = threading.Lock()


def make_typestore(distro: Literal["kilted", "jazzy"] = "kilted",
                   msgs_dir: str | os.PathLike | None = None) -> Typestore:
    """A rosbags typestore with the ROS 2 ``distro`` types plus atk_msgs.

    The same definitions give the same RIHS01 type hashes as the real ROS 2
    build, so bags written with it carry the hashes a real recording carries.
    Cached per (distro, folder).
    """
    stores = {"kilted": Stores.ROS2_KILTED, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise ValueError(f"distro must be one of {sorted(stores)}, got {distro!r}")
    folder = find_atk_msgs_dir(msgs_dir)
    key = f"{distro}:{folder.resolve()}"
    with _TYPESTORE_LOCK:
        if key in _TYPESTORES:
            return _TYPESTORES[key]
        store = get_typestore(stores[distro])
        types: dict = {}
        for f in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(f.read_text(), f"atk_msgs/msg/{f.stem}"))
        store.register(types)
        _TYPESTORES[key] = store
        return store


def register_from_bag(store: Typestore, connection: Any) -> None:
    """Register a type the store lacks from the definition stored in the bag."""
    if connection.msgtype in store.types:
        return
    msgdef = connection.msgdef
    if not msgdef.data:
        raise BagError(f"type {connection.msgtype} of topic {connection.topic} is unknown and the "
                       f"bag does not carry its definition")
    if msgdef.format.name == "MSG":
        from rosbags.typesys import get_types_from_msg as parse
        types: dict = {}
        # A ros2msg schema holds the main definition, then each dependency after
        # a line of '=' and 'MSG: pkg/Name'.
        parts = msgdef.data.split("=" * 80 + "\n")
        types.update(parse(parts[0], connection.msgtype))
        for part in parts[1:]:
            head, _, body = part.partition("\n")
            if head.startswith("MSG: "):
                name = head[5:].strip()
                if "/msg/" not in name:
                    name = name.replace("/", "/msg/", 1)
                types.update(parse(body, name))
    else:
        from rosbags.typesys import get_types_from_idl
        types = get_types_from_idl(msgdef.data)
    store.register({k: v for k, v in types.items() if k not in store.types})
