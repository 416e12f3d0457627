"""``model.json`` of a trained model folder: the one place it is written, read and checked.

ROS-free, no torch. Two readers use it: the tracker
(:func:`atk_perception.keypoint_template.load_model_template`: the canonical
image and the keypoints) and the policy loader (:mod:`atk_policy.artifact`,
which also checks the weights and statistics it holds). The full layout is
documented in :mod:`atk_policy.artifact`; the fields read here::

    {"format_version": 1, "kind": "atk-keypoint-policy",
     "image_size": [W, H],
     "keypoints": {"ids": [...], "names": [...],            # names optional here
                   "canonical_xy": [[x, y], ...], "support_xy": [[x, y], ...]},  # support optional
     "template_image": "template.png", "template_sha256": "...",
     "content_sha256": "..."}  # sha256 of the rest: any later edit is detected

Every failure is a :class:`ModelJsonError` (a ``ValueError``) naming the
file and the field; each reader re-raises it as its own error class.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
# model.json is a few hundred kB even with a selection report; a file far
# larger is not ours, and json.loads of it could exhaust memory.
MAX_MODEL_JSON_BYTES = 64 << 20


class ModelJsonError(ValueError):
    """A model.json (or the template it names) that cannot be used; the message says what differs."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_sha256(doc: dict) -> str:
    """sha256 of model.json's content without its own ``content_sha256`` field.

    Any edit of the JSON after saving (a moved keypoint, a changed
    statistic) changes this digest, so a tampered file is refused.
    """
    body = {k: v for k, v in doc.items() if k != "content_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_model_json(model_dir: Path, doc: dict) -> None:
    """Write ``doc`` as model_dir/model.json with its ``content_sha256``."""
    doc = dict(doc)
    doc["content_sha256"] = content_sha256(doc)
    (Path(model_dir) / MODEL_JSON).write_text(json.dumps(doc, indent=1))


def read_model_json(model_dir: str | Path, *, kind: str | None = None, verify: bool = False) -> dict:
    """model.json of ``model_dir`` as a dict, checked for its format version.

    kind: also require this ``kind``. verify: also require the content hash
    to match (the file was not edited after it was saved) and a
    ``template_sha256`` (see :func:`template_path`).
    """
    d = Path(model_dir).expanduser()
    if not d.is_dir():
        raise ModelJsonError(f"model folder {d} does not exist")
    p = d / MODEL_JSON
    if not p.is_file():
        raise ModelJsonError(f"{d} has no {MODEL_JSON}: it is not a trained model folder")
    size = p.stat().st_size
    if size > MAX_MODEL_JSON_BYTES:
        raise ModelJsonError(f"{p} is {size} bytes, more than the {MAX_MODEL_JSON_BYTES} a model.json can be")
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelJsonError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelJsonError(f"{p} must hold a JSON object")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelJsonError(f"{p}: format_version {version!r} is not supported, this code reads "
                             f"{FORMAT_VERSION}; retrain or convert the model")
    if kind is not None and doc.get("kind") != kind:
        raise ModelJsonError(f"{p}: kind is {doc.get('kind')!r}, expected {kind!r}")
    if verify:
        want, got = doc.get("content_sha256"), content_sha256(doc)
        if want != got:
            raise ModelJsonError(f"{p} was edited after it was saved (content_sha256 {str(want)[:12]}... in the "
                                 f"file, content hashes to {got[:12]}...); retrain or re-save the model instead "
                                 f"of editing it")
    return doc


def need(doc: dict, key: str, typ: type | tuple, where: str = MODEL_JSON) -> Any:
    """``doc[key]``, which must exist and be of type ``typ``."""
    if key not in doc:
        raise ModelJsonError(f"{where}: missing field {key!r}")
    v = doc[key]
    if not isinstance(v, typ):
        raise ModelJsonError(f"{where}: field {key!r} has type {type(v).__name__}, expected {typ}")
    return v


def image_size(doc: dict, where: str = MODEL_JSON) -> tuple[int, int]:
    """``image_size`` as (W, H) positive ints."""
    size = need(doc, "image_size", list, where)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ModelJsonError(f"{where}: image_size must be [W, H] positive integers, got {size}")
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class ModelKeypoints:
    """The keypoints of model.json. canonical_xy: (N, 2) float32 pixels on the template,
    in the order the policy expects; support_xy: (M, 2) float32, the model's other candidates."""

    image_size: tuple[int, int]       #: (W, H)
    ids: tuple[int, ...]
    names: tuple[str, ...] | None     #: None: model.json gives none
    canonical_xy: np.ndarray
    support_xy: np.ndarray


def parse_keypoints(doc: dict, where: str = MODEL_JSON) -> ModelKeypoints:
    """Check and parse ``image_size`` and ``keypoints`` (ids distinct ints, one finite [x, y]
    inside the image per id, names non-empty strings if given)."""
    w, h = image_size(doc, where)
    kps = need(doc, "keypoints", dict, where)
    ids = need(kps, "ids", list, f"{where} keypoints")
    xy = need(kps, "canonical_xy", list, f"{where} keypoints")
    names = need(kps, "names", list, f"{where} keypoints") if "names" in kps else None
    lengths = f"keypoints.ids ({len(ids)})" + (f", names ({len(names)})" if names is not None else "")
    if len(ids) != len(xy) or (names is not None and len(names) != len(ids)) or not ids:
        raise ModelJsonError(f"{where}: {lengths} and canonical_xy ({len(xy)}) must have the same non-zero "
                             f"length")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids) or len(set(ids)) != len(ids):
        raise ModelJsonError(f"{where}: keypoints.ids must be distinct integers >= 0, got {ids}")
    if names is not None and not all(isinstance(n, str) and n for n in names):
        raise ModelJsonError(f"{where}: keypoints.names must be non-empty strings, got {names}")
    for k, pt in enumerate(xy):
        if not _is_point(pt):
            raise ModelJsonError(f"{where}: keypoints.canonical_xy[{k}] must be [x, y] finite, got {pt}")
        if not (0 <= pt[0] <= w and 0 <= pt[1] <= h):
            raise ModelJsonError(f"{where}: keypoints.canonical_xy[{k}] = {pt} (keypoint id {ids[k]}) lies outside "
                                 f"the {w}x{h} image")
    support = kps.get("support_xy") or []
    if not isinstance(support, list) or not all(_is_point(pt) for pt in support):
        raise ModelJsonError(f"{where}: keypoints.support_xy must be a list of finite [x, y], got {support!r:.200}")
    return ModelKeypoints((w, h), tuple(ids), None if names is None else tuple(names),
                          np.asarray(xy, np.float32).reshape(-1, 2), np.asarray(support, np.float32).reshape(-1, 2))


def _is_point(pt: Any) -> bool:
    return (isinstance(pt, list) and len(pt) == 2
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in pt))


def template_path(model_dir: str | Path, doc: dict, *, require_sha: bool = False) -> Path:
    """The template image file model.json names, inside the folder and matching ``template_sha256``
    (checked when given; required with ``require_sha``)."""
    d = Path(model_dir).expanduser()
    where = str(d / MODEL_JSON)
    name = need(doc, "template_image", str, where)
    if Path(name).name != name or not name:
        raise ModelJsonError(f"{where}: template_image must be a file name inside the folder, got {name!r}")
    path = d / name
    if not path.is_file():
        raise ModelJsonError(f"{d}: template image {name} does not exist")
    want = need(doc, "template_sha256", str, where) if require_sha else doc.get("template_sha256")
    if want:
        got = sha256_file(path)
        if got != want:
            raise ModelJsonError(f"{path}: sha256 {got[:12]}... does not match model.json's template_sha256 "
                                 f"{str(want)[:12]}...: the template was replaced or edited after training; "
                                 f"re-export the model")
    return path


def read_template_image(model_dir: str | Path, doc: dict, *, require_sha: bool = False) -> np.ndarray:
    """The template image, (H, W, 3) uint8 RGB, checked against model.json (file, sha256, image_size)."""
    import cv2

    path = template_path(model_dir, doc, require_sha=require_sha)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ModelJsonError(f"template image {path} cannot be read as an image")
    w, h = image_size(doc, str(Path(model_dir) / MODEL_JSON))
    if bgr.shape[:2] != (h, w):
        raise ModelJsonError(f"{Path(model_dir) / MODEL_JSON}: image_size {[w, h]} does not match "
                             f"{path.name} ({bgr.shape[1]}x{bgr.shape[0]})")
    return np.ascontiguousarray(bgr[:, :, ::-1])


#: The canonical frame's depth, beside the template image (optional): uint16 millimetres, 0 = no reading.
TEMPLATE_DEPTH_FILE = "template_depth.png"


def read_template_depth(model_dir: str | Path, doc: dict) -> np.ndarray | None:
    """The template frame's depth (H, W) float32 metres (0: no reading), or None when model.json names
    none; checked against ``template_depth_sha256`` and ``image_size``."""
    import cv2

    name = doc.get("template_depth")
    if not name:
        return None
    d = Path(model_dir).expanduser()
    where = str(d / MODEL_JSON)
    if not isinstance(name, str) or Path(name).name != name:
        raise ModelJsonError(f"{where}: template_depth must be a file name inside the folder, got {name!r}")
    path = d / name
    if not path.is_file():
        raise ModelJsonError(f"{d}: template depth {name} does not exist")
    want = doc.get("template_depth_sha256")
    if want and sha256_file(path) != want:
        raise ModelJsonError(f"{path}: sha256 does not match model.json's template_depth_sha256: the depth "
                             f"was replaced or edited after training; re-export the model")
    mm = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    w, h = image_size(doc, where)
    if mm is None or mm.dtype != np.uint16 or mm.shape != (h, w):
        raise ModelJsonError(f"{path}: expected a {w}x{h} 16-bit depth PNG (mm), got "
                             f"{None if mm is None else (mm.shape, str(mm.dtype))}")
    return mm.astype(np.float32) / 1000.0
