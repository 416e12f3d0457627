"""The paper's Fig. 8 for one task: the canonical frame with the keypoints
each selection method kept (ATK beside RandomSelect and ManualSelect, or any
other named point sets), drawn large enough that labels do not overlap."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

#: Where a label may go relative to its point (dx, dy in display pixels), in order of preference.
_OFFSETS = [(8, -8), (8, 16), (-8, -8), (-8, 16), (14, 4), (-14, 4), (0, -16), (0, 26),
            (22, -20), (22, 30), (-22, -20), (-22, 30), (34, 4), (-34, 4), (0, -30), (0, 40)]


def place_labels(points: np.ndarray, texts: Sequence[str], size: tuple[int, int],
                 char_w: float = 8.0, line_h: float = 14.0, dot_r: float = 5.0) -> list[tuple[int, int]]:
    """Bottom-left corners (x, y) of each text's box near its point (N, 2), display
    pixels, chosen greedily so that no box overlaps another box or any point's
    dot and all stay inside ``size`` (w, h) when possible (else the least overlap)."""
    w, h = size
    boxes: list[tuple[float, float, float, float]] = []   # x0, y0, x1, y1
    dots = [(x - dot_r, y - dot_r, x + dot_r, y + dot_r) for x, y in np.asarray(points, float)]

    def overlap(a, b) -> float:
        dx = min(a[2], b[2]) - max(a[0], b[0])
        dy = min(a[3], b[3]) - max(a[1], b[1])
        return max(0.0, dx) * max(0.0, dy)

    out = []
    for (x, y), text in zip(np.asarray(points, float), texts):
        tw = char_w * len(text)
        best = None
        for dx, dy in _OFFSETS:
            x0 = x + dx if dx >= 0 else x + dx - tw
            box = (x0, y + dy - line_h, x0 + tw, y + dy)
            outside = (max(0.0, -box[0]) + max(0.0, box[2] - w) + max(0.0, -box[1]) + max(0.0, box[3] - h)) * 100
            cost = outside + sum(overlap(box, b) for b in boxes) + sum(overlap(box, d) for d in dots)
            if best is None or cost < best[0]:
                best = (cost, box)
            if cost == 0:
                break
        boxes.append(best[1])
        out.append((int(round(best[1][0])), int(round(best[1][3]))))
    return out


def draw_selection(image: np.ndarray, panels: Sequence[tuple[str, np.ndarray, Sequence[str]]],
                   path: Path, scale: int = 3) -> Path:
    """Side-by-side panels of ``image`` (H, W, 3) RGB scaled ``scale`` times,
    each (title, points (N, 2) in ``image`` pixels, labels); written as PNG."""
    import cv2

    h, w = image.shape[:2]
    big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    colours = [(0, 200, 0), (230, 120, 0), (40, 120, 255), (200, 0, 200)]
    tiles = []
    for k, (title, pts, labels) in enumerate(panels):
        tile = big.copy()
        col = colours[k % len(colours)]
        disp = (np.asarray(pts, float).reshape(-1, 2) + 0.5) * scale - 0.5
        spots = place_labels(disp, labels, (w * scale, h * scale))
        for (x, y), text, (lx, ly) in zip(disp, labels, spots):
            cv2.circle(tile, (int(round(x)), int(round(y))), 5, col, -1, cv2.LINE_AA)
            cv2.circle(tile, (int(round(x)), int(round(y))), 5, (255, 255, 255), 1, cv2.LINE_AA)
            cv2.putText(tile, text, (lx, ly - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, text, (lx, ly - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                        cv2.LINE_AA)
        bar = np.full((36, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, f"{title} ({len(disp)} keypoints)", (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, col, 2,
                    cv2.LINE_AA)
        tiles.append(np.vstack([bar, tile]))
    sep = np.full((tiles[0].shape[0], 8, 3), 255, np.uint8)
    row = tiles[0]
    for t in tiles[1:]:
        row = np.hstack([row, sep, t])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
    return path
