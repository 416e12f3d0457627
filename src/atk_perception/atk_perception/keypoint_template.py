"""The keypoint template the tracker transfers from (ROS-free).

A template is the canonical image I_can plus the selected keypoints'
canonical pixel coordinates, with stable ids and names. It comes from a
model artifact folder::

    model_dir/
      model.json       {"format_version": 1,
                        "image_size": [W, H],
                        "keypoints": {"ids": [...], "names": [...],
                                      "canonical_xy": [[x, y], ...]},
                        "template_image": "template.png", ...}
      template.png

(read by :mod:`atk_perception.model_json`; other fields of model.json, e.g.
the policy's config, are ignored here), or from a plain list of points plus a
template image path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .model_json import (MODEL_JSON, ModelJsonError, parse_keypoints, read_model_json, read_template_depth,
                         read_template_image)


class TemplateError(ValueError):
    """A template or model artifact that cannot be used (operator-facing)."""


@dataclass(frozen=True)
class KeypointTemplate:
    """Canonical template image and keypoints.

    image: (H, W, 3) uint8 RGB. points: (N, 2) float32 pixels on ``image``.
    ids: N distinct ints; names: N strings.
    """

    image: np.ndarray
    points: np.ndarray
    ids: tuple[int, ...]
    names: tuple[str, ...]
    source: str = ""
    #: (M, 2) float32 pixels: more points on the image (the model's other
    #: candidates) that ``transfer`` maps along with ``points`` and then drops,
    #: so that h_C sees each object through several points; None: none.
    support: np.ndarray | None = None
    #: (H, W) float32 metres: the template frame's depth (0: no reading), when
    #: the model was trained on frames with depth; with the camera's pose it
    #: lets h_C search objects on the table in 3D (table_search.py). None: none.
    depth: np.ndarray | None = None

    def __post_init__(self) -> None:
        img = self.image
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
                and img.shape[2] == 3 and img.shape[0] >= 16 and img.shape[1] >= 16):
            shape = getattr(img, "shape", None)
            raise TemplateError(f"image: expected (H, W, 3) uint8 RGB of at least 16x16, "
                                f"got {shape} {getattr(img, 'dtype', type(img).__name__)}")
        pts = self.points
        if not (isinstance(pts, np.ndarray) and pts.ndim == 2 and pts.shape[1] == 2
                and pts.shape[0] >= 1):
            raise TemplateError(f"points: expected (N, 2) with N >= 1, got "
                                f"{getattr(pts, 'shape', pts)}")
        if not np.all(np.isfinite(pts)):
            raise TemplateError("points: contain NaN or infinite values")
        n = pts.shape[0]
        if len(self.ids) != n or len(self.names) != n:
            raise TemplateError(f"ids/names: need {n} of each (one per point), got "
                                f"{len(self.ids)} ids and {len(self.names)} names")
        if len(set(self.ids)) != n:
            raise TemplateError(f"ids: must be distinct, got {list(self.ids)}")
        if any(i < 0 for i in self.ids):
            raise TemplateError(f"ids: must be >= 0, got {list(self.ids)}")
        h, w = img.shape[:2]
        outside = (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
        if np.any(outside):
            k = int(np.flatnonzero(outside)[0])
            raise TemplateError(
                f"points: keypoint id {self.ids[k]} at ({pts[k, 0]:.1f}, {pts[k, 1]:.1f}) is "
                f"outside the {w}x{h} template image{self._from()}; were the points "
                "defined on an image of another size?")
        if self.depth is not None and np.shape(self.depth) != img.shape[:2]:
            raise TemplateError(f"depth: {np.shape(self.depth)} does not match the template image {img.shape[:2]}")

    def transfer_points(self) -> np.ndarray:
        """(N + M, 2): the keypoints, then the support points."""
        if self.support is None or len(self.support) == 0:
            return self.points
        return np.concatenate([self.points, self.support]).astype(np.float32)

    def _from(self) -> str:
        return f" ({self.source})" if self.source else ""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the template image."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def resized(self, width: int, height: int) -> KeypointTemplate:
        """The template resampled to ``width`` x ``height`` (points scaled with it)."""
        w, h = self.size
        sx, sy = width / w, height / h
        img = cv2.resize(self.image, (width, height), interpolation=cv2.INTER_AREA
                         if sx < 1 else cv2.INTER_LINEAR)
        # Pixel centres: x' + 0.5 = (x + 0.5) * s.
        def scale(p: np.ndarray) -> np.ndarray:
            q = (p + 0.5) * np.array([sx, sy], np.float32) - 0.5
            return np.clip(q, 0, [width - 1, height - 1]).astype(np.float32)

        return KeypointTemplate(img, scale(self.points), self.ids, self.names,
                                f"{self.source} resized to {width}x{height}",
                                None if self.support is None else scale(self.support))


def default_names(ids: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"kp{i:02d}" for i in ids)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; TemplateError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"template image {path} does not exist")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise TemplateError(f"template image {path} cannot be read as an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_model_template(model_dir: str | Path) -> KeypointTemplate:
    """Load the template of a model artifact folder (see module doc).

    model.json is read by :mod:`atk_perception.model_json` (format version,
    keypoints, template file and its sha256); support points outside the
    image are dropped.
    """
    model_dir = Path(model_dir).expanduser()
    try:
        doc = read_model_json(model_dir)
        kp = parse_keypoints(doc, str(model_dir / MODEL_JSON))
        image = read_template_image(model_dir, doc)
        depth = read_template_depth(model_dir, doc)
    except ModelJsonError as exc:
        raise TemplateError(str(exc)) from exc
    h, w = image.shape[:2]
    support = kp.support_xy
    support = support[(support[:, 0] >= 0) & (support[:, 0] <= w - 1)
                      & (support[:, 1] >= 0) & (support[:, 1] <= h - 1)]
    return KeypointTemplate(image, kp.canonical_xy, kp.ids, kp.names or default_names(kp.ids), str(model_dir),
                            support if len(support) else None, depth)


def parse_points(values: Sequence[float]) -> np.ndarray:
    """Flat ``[x0, y0, x1, y1, ...]`` (a ROS double-array parameter) -> (N, 2)."""
    vals = [float(v) for v in values]
    if len(vals) == 0 or len(vals) % 2:
        raise TemplateError(f"points: need a non-empty flat list x0, y0, x1, y1, ..., "
                            f"got {len(vals)} values")
    if not all(math.isfinite(v) for v in vals):
        raise TemplateError("points: contain NaN or infinite values")
    return np.asarray(vals, dtype=np.float32).reshape(-1, 2)


def load_points_template(points: Sequence[float] | np.ndarray, template_image: str | Path,
                         ids: Sequence[int] | None = None,
                         names: Sequence[str] | None = None) -> KeypointTemplate:
    """Template from explicit points (flat list or (N, 2)) on an image file."""
    arr = np.asarray(points, dtype=np.float32)
    pts = parse_points(arr.ravel().tolist()) if arr.ndim != 2 else arr
    ids_t = tuple(int(i) for i in ids) if ids else tuple(range(len(pts)))
    names_t = tuple(str(n) for n in names) if names else default_names(ids_t)
    return KeypointTemplate(read_rgb(template_image), pts, ids_t, names_t, str(template_image))
