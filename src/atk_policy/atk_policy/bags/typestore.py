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


_DELIMITER = "=" * 80 + "\n"
_SERVICE_EVENT_SUFFIX = "_Event"


def normalize_msgtype(msgtype: str) -> str:
    """``pkg/Type`` (the old style, without ``/msg/``) -> ``pkg/msg/Type``; other names unchanged."""
    parts = msgtype.strip("/").split("/")
    if len(parts) == 2 and all(parts):
        return f"{parts[0]}/msg/{parts[1]}"
    return msgtype


def service_of_event(msgtype: str) -> str | None:
    """``pkg/srv/Name_Event`` -> ``pkg/srv/Name`` (the type of a service event topic); None otherwise."""
    parts = msgtype.split("/")
    if len(parts) == 3 and parts[1] == "srv" and parts[2].endswith(_SERVICE_EVENT_SUFFIX) \
            and len(parts[2]) > len(_SERVICE_EVENT_SUFFIX):
        return msgtype[: -len(_SERVICE_EVENT_SUFFIX)]
    return None


def _sections(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Split a rosbag2 definition into (main text, [(kind, name, body)]).

    rosbag2 writes the root definition first, then each dependency after a
    line of 80 '=' and ``MSG: pkg/Name`` (or ``IDL:``); a service root is
    itself preceded by such a line with ``SRV: pkg/srv/Name`` (Jazzy and
    later; the first Jazzy recordings wrote the bare .srv text).
    """
    main, deps = "", []
    for i, part in enumerate(text.split(_DELIMITER)):
        head, _, body = part.partition("\n")
        kind = head.split(":", 1)[0] if head[:5] in ("MSG: ", "IDL: ", "SRV: ") else ""
        if kind == "SRV" or (i == 0 and not kind):
            main = body if kind else part
        elif kind:
            deps.append((kind, head[5:].strip(), body))
    return main, deps


def _parse_msg(text: str, name: str) -> dict:
    from rosbags.typesys import get_types_from_msg as parse

    return parse(text, normalize_msgtype(name))


def _service_types(srv_text: str, service: str) -> dict:
    """Request, response and event types of ``service`` (``pkg/srv/Name``) from its .srv text.

    The event is what a service event topic carries (service_msgs): ``info``
    then the request and the response, each a sequence of at most one.
    """
    from rosbags.typesys.base import Nodetype

    req_text, sep, resp_text = srv_text.partition("\n---")
    if not sep and srv_text.startswith("---"):
        req_text, resp_text = "", srv_text[3:]
    elif not sep:
        raise ValueError("the service definition has no '---' line between request and response")
    pkg, _, name = service.split("/")
    types: dict = {}
    for part, text in (("Request", req_text), ("Response", resp_text.partition("\n")[2])):
        # The msg parser files every name under /msg/; parse under a stand-in
        # name in the same package, then file the result under /srv/.
        parsed = _parse_msg(text, f"{pkg}/msg/{name}_{part}")
        types[f"{service}_{part}"] = parsed.pop(f"{pkg}/msg/{name}_{part}")
        types.update(parsed)
    types[f"{service}{_SERVICE_EVENT_SUFFIX}"] = ([], [
        ("info", (Nodetype.NAME, "service_msgs/msg/ServiceEventInfo")),
        ("request", (Nodetype.SEQUENCE, ((Nodetype.NAME, f"{service}_Request"), 1))),
        ("response", (Nodetype.SEQUENCE, ((Nodetype.NAME, f"{service}_Response"), 1))),
    ])
    return types


def register_from_bag(store: Typestore, connection: Any, definition: str | None = None) -> str:
    """Make the type of ``connection`` known to ``store``; return the name to deserialise it with.

    Names already known (old-style ``pkg/Type`` included) are used as they
    are. Otherwise the type comes from ``definition`` or else the definition
    stored in the bag: a message (ros2msg or ros2idl, with its
    dependencies) or, for a service event topic (``pkg/srv/Name_Event``),
    the service's .srv text, from which request, response and event types
    are built. Raises BagError naming the topic and type when the type
    cannot be made known; the store is left unchanged then.
    """
    msgtype = normalize_msgtype(connection.msgtype)
    if msgtype in store.types:
        return msgtype
    msgdef = connection.msgdef
    text = definition if definition is not None else msgdef.data
    what = f"type {connection.msgtype} of topic {connection.topic}"
    if not text:
        raise BagError(f"{what} is unknown and the bag does not carry its definition")
    service = service_of_event(msgtype)
    try:
        if msgdef.format.name == "IDL" and service is None:
            from rosbags.typesys import get_types_from_idl

            types = get_types_from_idl(text)
        else:
            main, deps = _sections(text)
            types = _service_types(main, service) if service else _parse_msg(main, msgtype)
            for kind, name, body in deps:
                if kind == "MSG":
                    types.update(_parse_msg(body, name))
                elif kind == "IDL":
                    from rosbags.typesys import get_types_from_idl

                    types.update(get_types_from_idl(body))
        with _TYPESTORE_LOCK:
            store.register({k: v for k, v in types.items() if k not in store.types})
    except Exception as exc:  # rosbags raises TypesysError, KeyError, ValueError... for bad definitions
        raise BagError(f"{what}: its definition in the bag cannot be parsed ({type(exc).__name__}: {exc})") \
            from exc
    if msgtype not in store.types:
        raise BagError(f"{what}: the definition in the bag does not define {msgtype}")
    return msgtype
