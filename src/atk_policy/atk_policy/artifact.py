"""The trained-policy artifact: a folder that the policy node loads.

ROS-free. Layout of ``model_dir``::

    policy.safetensors   weights of the keypoint policy (no pickles)
    model.json           everything else (see below)
    template.png         the canonical image I_can (RGB content, PNG file)

``model.json`` holds::

    {"format_version": 1,
     "kind": "atk-keypoint-policy",
     "image_size": [W, H],
     "keypoints": {"ids": [...], "names": [...], "canonical_xy": [[x, y], ...]},
     "template_image": "template.png", "template_sha256": "...",
     "weights": {"file": "policy.safetensors", "sha256": "...", "tensors": {name: shape}},
     "model": {"num_keypoints": N, "learn_mask": false, "config": {ModelConfig}},
     "normalisation": {"proprio_mean": [7], "proprio_std": [7], "action_mean": [7], "action_std": [7],
                       "action_mode": "delta" | "absolute" | "tcp", "chunk": K, "binary_gripper": bool},
     "observation": {...}, "action": {...},     # layout, see docs/interfaces.md
     "config": {ATKConfig} or null, "selection": {...} or null, "extra": {...},
     "content_sha256": "..."}   # sha256 of the rest: any later edit is refused

``keypoints.ids`` are candidate indices on the canonical image; the policy
expects its keypoints in exactly that order. Loading validates every field
and refuses mismatches (another format version or kind, edited JSON,
weights or template that do not match their sha256, shapes that disagree)
with an :class:`ArtifactError` that says what differs. Nothing in model.json
is trusted before it has been checked against the weights file: the tensor
shapes in the safetensors header are compared with model.json, and the
network model.json describes is first built on torch's ``meta`` device (no
memory) and compared with them, so an edited architecture (hidden width
40000) is refused before anything is allocated. Normalisation statistics
must be physically plausible (|mean| <= MAX_ABS_MEAN, std in
[MIN_PLAUSIBLE_STD, MAX_PLAUSIBLE_STD]): an action std of 1e30 would turn
any network output into an absurd joint target. Every failure, including
torch's own, is an ArtifactError.

API::

    save_policy(model_dir, policy, template_image, *, config=None,
                selection=None, extra=None) -> Path
    load_policy(model_dir) -> KeypointPolicy
        .select_action(keypoints (N, 2) float pixels, proprio (7,)) -> (7,)
        .reset()
        .keypoint_ids, .keypoint_names, .canonical_xy (N, 2), .image_size (W, H)
    read_model_json(model_dir) -> dict    (validated JSON only, no torch)
    load_template(model_dir) -> (H, W, 3) uint8 RGB
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np

from atk_perception import kinematics as kin
from atk_perception import model_json as mj
from atk_perception.model_json import FORMAT_VERSION, MODEL_JSON, sha256_file, write_model_json

KIND = "atk-keypoint-policy"
WEIGHTS_FILE = "policy.safetensors"
TEMPLATE_FILE = "template.png"
# The safetensors header lists one entry per tensor (a few dozen).
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
# Every statistic is in robot units: rad (joints, joint changes, yaw), m
# (TCP), 0..1 (gripper), sin/cos. The UR5e's joints span +-2 pi, so nothing
# a demonstration produces has a mean or spread beyond 10. Training floors
# every std at model.MIN_STD = 1e-3; a smaller std amplifies input noise.
MAX_ABS_MEAN = 10.0
MAX_PLAUSIBLE_STD = 10.0
MIN_PLAUSIBLE_STD = 1e-4

JOINT_NAMES = kin.JOINT_NAMES
OBSERVATION_LAYOUT = {
    "keypoints": {"shape": ["N", 2], "unit": "pixel", "order": "keypoints.ids",
                  "normalisation": "x / W * 2 - 1, y / H * 2 - 1 inside the model"},
    "proprio": {"shape": [7], "names": list(JOINT_NAMES) + [kin.GRIPPER_JOINT],
                "unit": "rad (joints), 0 open .. 1 closed (gripper)"},
}
ACTION_LAYOUT = {
    "shape": [7], "names": [f"{j}_target" for j in JOINT_NAMES] + ["gripper_command"],
    "unit": "rad (target joint positions for the next control step), 0 open .. 1 closed (gripper)",
}


class ArtifactError(ValueError):
    """A model folder that cannot be loaded; the message says what differs."""


def write_png_rgb(path: Path, image: np.ndarray) -> None:
    import cv2

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ArtifactError(f"template image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    if not cv2.imwrite(str(path), np.ascontiguousarray(img[:, :, ::-1])):
        raise ArtifactError(f"could not write {path}")


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def save_policy(model_dir: str | Path, policy: Any, template_image: np.ndarray, *,
                config: Any = None, selection: dict | None = None,
                extra: dict | None = None, support_xy: np.ndarray | None = None,
                template_depth: np.ndarray | None = None) -> Path:
    """Write ``policy`` (a model.KeypointPolicy) and the canonical image.

    template_depth: (H, W) float metres of the canonical frame (0: no
    reading), written as template_depth.png (uint16 mm): with the camera's
    pose, h_C searches the objects on the table in 3D (table_search.py).

    support_xy: (M, 2) pixels, the other candidates on the canonical image.
    The tracker transfers them together with the policy's keypoints (as
    propagation transferred all candidates when the training data was made)
    and keeps the policy's: h_C's object search needs a few points per
    object, which a minimal set of N rarely has.
    template_image: (H, W, 3) uint8 RGB of size policy.image_size.
    selection: JSON-ready report (candidate ids, keep-probabilities, errors).
    config: an ATKConfig (or its dict). Returns the folder.
    """
    from safetensors.torch import save_file

    from .config import to_dict

    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    w, h = policy.image_size
    tmpl = np.asarray(template_image)
    if tmpl.shape != (h, w, 3):
        raise ArtifactError(f"template image is {tmpl.shape}, but the policy's image_size is {w}x{h}")
    write_png_rgb(d / TEMPLATE_FILE, tmpl)
    depth_doc = {}
    if template_depth is not None:
        dm = np.asarray(template_depth, np.float64)
        if dm.shape != (h, w):
            raise ArtifactError(f"template depth is {dm.shape}, but the policy's image_size is {w}x{h}")
        mm = np.clip(np.round(np.nan_to_num(dm, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0), 0, 65535)
        import cv2

        if not cv2.imwrite(str(d / mj.TEMPLATE_DEPTH_FILE), mm.astype(np.uint16)):
            raise ArtifactError(f"could not write {d / mj.TEMPLATE_DEPTH_FILE}")
        depth_doc = {"template_depth": mj.TEMPLATE_DEPTH_FILE,
                     "template_depth_sha256": sha256_file(d / mj.TEMPLATE_DEPTH_FILE)}
    elif (d / mj.TEMPLATE_DEPTH_FILE).exists():
        (d / mj.TEMPLATE_DEPTH_FILE).unlink()   # an older export's depth does not belong to this template
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(tensors, str(d / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION), "kind": KIND})
    cfg_dict = None if config is None else (config if isinstance(config, dict) else to_dict(config))
    doc = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "created_utc": _utc_now(),
        "image_size": [int(w), int(h)],
        "keypoints": {
            "ids": [int(i) for i in policy.keypoint_ids],
            "names": [str(n) for n in policy.keypoint_names],
            "canonical_xy": [[float(x), float(y)] for x, y in np.asarray(policy.canonical_xy)],
            **({} if support_xy is None or len(support_xy) == 0 else
               {"support_xy": [[float(x), float(y)] for x, y in np.asarray(support_xy, np.float64).reshape(-1, 2)]}),
        },
        "template_image": TEMPLATE_FILE,
        "template_sha256": sha256_file(d / TEMPLATE_FILE),
        **depth_doc,
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(d / WEIGHTS_FILE),
                    "tensors": {k: list(v.shape) for k, v in tensors.items()}},
        "model": {"num_keypoints": int(policy.num_keypoints), "learn_mask": bool(policy.learn_mask),
                  "config": to_dict(policy.cfg)},
        "normalisation": policy.norm.to_dict(),
        "observation": OBSERVATION_LAYOUT,
        "action": ACTION_LAYOUT,
        "config": cfg_dict,
        "selection": selection,
        "extra": extra or {},
    }
    write_model_json(d, doc)
    return d


def _need(doc: dict, key: str, typ: type | tuple, where: str = "model.json") -> Any:
    try:
        return mj.need(doc, key, typ, where)
    except mj.ModelJsonError as exc:
        raise ArtifactError(str(exc)) from exc


def read_model_json(model_dir: str | Path, kind: str = KIND) -> dict:
    """Read and validate model.json (keypoints, image size, files); no torch needed.

    The document itself (format, kind, content hash, keypoints, template) is
    checked by :mod:`atk_perception.model_json`, as the tracker reads it;
    the weights file and the statistics here.
    """
    d = Path(model_dir)
    p = d / MODEL_JSON
    try:
        doc = mj.read_model_json(d, kind=kind, verify=True)
        if kind == KIND:
            kps = mj.parse_keypoints(doc, str(p))
            if kps.names is None:
                raise mj.ModelJsonError(f"{p} keypoints: missing field 'names'")
        else:
            mj.image_size(doc, str(p))
        mj.template_path(d, doc, require_sha=True)
    except mj.ModelJsonError as exc:
        raise ArtifactError(str(exc)) from exc
    weights = _need(doc, "weights", dict)
    wf = _need(weights, "file", str, "model.json weights")
    if Path(wf).name != wf:
        raise ArtifactError(f"{p}: weights.file must be a file name inside the folder, got {wf!r}")
    if not (d / wf).is_file():
        raise ArtifactError(f"{d}: weights file {wf} is missing")
    want = _need(weights, "sha256", str, "model.json weights")
    got = sha256_file(d / wf)
    if got != want:
        raise ArtifactError(f"{d / wf}: sha256 {got[:12]}... differs from model.json's {want[:12]}... "
                            f"(weights replaced or corrupted)")
    tensors = _need(weights, "tensors", dict, "model.json weights")
    header = safetensors_shapes(d / wf)
    if header != {k: v for k, v in tensors.items()}:
        diff = sorted(k for k in set(header) | set(tensors) if header.get(k) != tensors.get(k))
        raise ArtifactError(f"{d / wf}: tensors in the file differ from model.json's weights.tensors: "
                            + ", ".join(f"{k} (file {header.get(k)}, model.json {tensors.get(k)})"
                                        for k in diff[:8]))
    check_statistics(_need(doc, "normalisation", dict), p)
    _need(doc, "model", dict)
    return doc


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """{tensor name: shape} from a safetensors file's header, without reading the data.

    Format: 8 bytes little-endian header length n, then n bytes of JSON
    {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ArtifactError(f"{path}: {size} bytes is too short for a safetensors file")
            n = int.from_bytes(raw, "little")
            if n > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
                raise ArtifactError(f"{path}: safetensors header length {n} is impossible for a {size} byte "
                                    "file (corrupted or not safetensors)")
            header = json.loads(fh.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: safetensors header must be a JSON object")
    shapes: dict[str, list[int]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(isinstance(v, int) and v >= 0 for v in shape)):
            raise ArtifactError(f"{path}: safetensors header entry {name!r} has no valid shape: {entry!r}")
        shapes[name] = shape
    return shapes


def check_statistics(norm: dict, where: Path | str = "model.json") -> None:
    """Refuse normalisation statistics no demonstration could produce (see the
    MAX_ABS_MEAN / *_PLAUSIBLE_STD comment); shapes are checked by Normalisation."""
    for key in ("proprio_mean", "action_mean", "proprio_std", "action_std"):
        values = norm.get(key)
        if not isinstance(values, list) or not values:
            raise ArtifactError(f"{where}: normalisation.{key} must be a non-empty list of numbers")
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: normalisation.{key} must be numbers: {exc}") from exc
        if arr.ndim != 1 or not np.all(np.isfinite(arr)):
            raise ArtifactError(f"{where}: normalisation.{key} must be finite numbers, got {values[:8]}")
        if key.endswith("mean"):
            bad = np.flatnonzero(np.abs(arr) > MAX_ABS_MEAN)
            limit = f"|value| <= {MAX_ABS_MEAN}"
        else:
            bad = np.flatnonzero((arr < MIN_PLAUSIBLE_STD) | (arr > MAX_PLAUSIBLE_STD))
            limit = f"[{MIN_PLAUSIBLE_STD}, {MAX_PLAUSIBLE_STD}]"
        if bad.size:
            raise ArtifactError(f"{where}: normalisation.{key}[{int(bad[0])}] = {arr[bad[0]]:.6g} is not a "
                                f"plausible statistic of robot data in rad/m (allowed {limit}); the model "
                                "was corrupted or edited, retrain it")


def load_template(model_dir: str | Path) -> np.ndarray:
    """The canonical image, (H, W, 3) uint8 RGB, checked against model.json."""
    doc = read_model_json(model_dir)
    try:
        return mj.read_template_image(model_dir, doc, require_sha=True)
    except mj.ModelJsonError as exc:
        raise ArtifactError(str(exc)) from exc


def load_state(model_dir: Path, doc: dict) -> dict:
    """Weights as {name: tensor}, checked against model.json's tensor shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = model_dir / doc["weights"]["file"]
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path}: cannot read weights: {exc}") from exc
    shapes = doc["weights"]["tensors"]
    if set(shapes) != set(state):
        raise ArtifactError(f"{path}: tensors {sorted(state)} differ from model.json's {sorted(shapes)}")
    for k, v in state.items():
        if list(v.shape) != list(shapes[k]):
            raise ArtifactError(f"{path}: tensor {k!r} has shape {list(v.shape)}, model.json says {shapes[k]}")
    return state


def load_policy(model_dir: str | Path) -> Any:
    """Load and validate a model folder; returns a model.KeypointPolicy in eval mode."""
    from .config import ModelConfig, from_dict
    from .model import KeypointPolicy, Normalisation

    d = Path(model_dir)
    doc = read_model_json(d)
    kps, mdl = doc["keypoints"], doc["model"]
    n = len(kps["ids"])
    if mdl.get("num_keypoints") != n:
        raise ArtifactError(f"{d / MODEL_JSON}: model.num_keypoints is {mdl.get('num_keypoints')!r} but "
                            f"{n} keypoints are listed")
    import torch

    try:
        mcfg = from_dict(ModelConfig, _need(mdl, "config", dict, "model.json model"))
        norm = Normalisation.from_dict(doc["normalisation"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{d / MODEL_JSON}: {exc}") from exc

    def build() -> Any:
        return KeypointPolicy(n, tuple(doc["image_size"]), mcfg, norm,
                              learn_mask=bool(mdl.get("learn_mask", False)),
                              keypoint_ids=kps["ids"], keypoint_names=kps["names"],
                              canonical_xy=np.asarray(kps["canonical_xy"], np.float32))

    # The architecture in model.json is only trusted once it matches the
    # weights: build it on the meta device first (shapes only, no memory).
    try:
        with torch.device("meta"):
            expected = {k: list(v.shape) for k, v in build().state_dict().items()}
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{d / MODEL_JSON}: the model it describes cannot be built: {exc}") from exc
    got = doc["weights"]["tensors"]  # equal to the safetensors header (read_model_json)
    if expected != got:
        diff = [k for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)]
        raise ArtifactError(f"{d}: weights do not fit the model described in model.json; differing tensors: "
                            + ", ".join(f"{k} (model {expected.get(k)}, file {got.get(k)})" for k in diff[:8]))
    try:
        policy = build()
        state = load_state(d, doc)
        policy.load_state_dict(state, strict=True)
    except ArtifactError:
        raise
    except (RuntimeError, MemoryError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{d}: cannot load the model: {exc}") from exc
    policy.eval()
    policy.model_json = doc
    return policy


def save_baseline_policy(model_dir: str | Path, policy: Any, kind: str, template_image: np.ndarray, *,
                         model: dict, observation: dict, extra: dict | None = None) -> Path:
    """Folder of an image-based baseline (depth, point cloud), laid out like the keypoint artifact.

    kind: model.json's kind; model: what the loader needs to rebuild the
    network (JSON-ready); observation: the layout of select_action's inputs;
    template_image: (H, W, 3) uint8 RGB, the canonical frame (the folder's
    picture of the scene, as for every artifact). Weights as safetensors.
    """
    from safetensors.torch import save_file

    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_png_rgb(d / TEMPLATE_FILE, template_image)
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(tensors, str(d / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION), "kind": kind})
    doc = {"format_version": FORMAT_VERSION, "kind": kind, "created_utc": _utc_now(),
           "image_size": [int(v) for v in policy.image_size], "template_image": TEMPLATE_FILE,
           "template_sha256": sha256_file(d / TEMPLATE_FILE),
           "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(d / WEIGHTS_FILE),
                       "tensors": {k: list(v.shape) for k, v in tensors.items()}},
           "model": model, "normalisation": policy.norm.to_dict(), "observation": observation,
           "action": ACTION_LAYOUT, "extra": extra or {}}
    write_model_json(d, doc)
    return d


def load_baseline_policy(model_dir: str | Path, kind: str, build: Any) -> Any:
    """Load a folder written by :func:`save_baseline_policy`; ``build(doc)`` makes the untrained network
    that model.json describes. As :func:`load_policy`, that network is first built on the meta device and
    compared with the weights' shapes, so an edited architecture is refused before memory is allocated.
    Returns the policy in eval mode; every failure is an ArtifactError."""
    import torch

    from .model import Normalisation

    d = Path(model_dir)
    doc = read_model_json(d, kind=kind)
    try:
        Normalisation.from_dict(doc["normalisation"])
        with torch.device("meta"):
            expected = {k: list(v.shape) for k, v in build(doc).state_dict().items()}
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{d / MODEL_JSON}: the model it describes cannot be built: {exc}") from exc
    got = doc["weights"]["tensors"]  # equal to the safetensors header (read_model_json)
    if expected != got:
        diff = [k for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)]
        raise ArtifactError(f"{d}: weights do not fit the model described in model.json; differing tensors: "
                            + ", ".join(f"{k} (model {expected.get(k)}, file {got.get(k)})" for k in diff[:8]))
    try:
        policy = build(doc)
        policy.load_state_dict(load_state(d, doc), strict=True)
    except ArtifactError:
        raise
    except (RuntimeError, MemoryError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{d}: cannot load the model: {exc}") from exc
    policy.eval()
    policy.model_json = doc
    return policy
