"""Fig. 8's label placement: labels of clustered keypoints do not overlap each other or the dots."""
from __future__ import annotations

import cv2
import numpy as np

from atk_bringup.experiment.selection_figure import draw_selection, place_labels


def _boxes(points, texts, spots, char_w=8.0, line_h=14.0):
    return [(x, y - line_h, x + char_w * len(t), y) for (x, y), t in zip(spots, texts)]


def _overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_labels_of_a_tight_cluster_do_not_overlap():
    rng = np.random.default_rng(1)
    pts = np.array([480, 300]) + rng.uniform(-25, 25, (6, 2))   # six points within 50 px, as on the nigiri
    texts = [f"kp{i}" for i in range(6)]
    boxes = _boxes(pts, texts, place_labels(pts, texts, (960, 720)))
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not _overlap(boxes[i], boxes[j]), (i, j, boxes[i], boxes[j])
        for k, (x, y) in enumerate(pts):
            assert not _overlap(boxes[i], (x - 5, y - 5, x + 5, y + 5)), (i, k)
        assert 0 <= boxes[i][0] and boxes[i][2] <= 960 and 0 <= boxes[i][1] and boxes[i][3] <= 720


def test_draw_selection_writes_one_panel_per_method(tmp_path):
    img = np.full((40, 60, 3), 90, np.uint8)
    path = draw_selection(img, [("ATK", np.array([[10.0, 10.0]]), ["kp0"]),
                                ("RandomSelect", np.array([[30.0, 20.0], [50.0, 30.0]]), ["kp1", "kp2"])],
                          tmp_path / "fig.png", scale=3)
    out = cv2.imread(str(path))
    assert out.shape == (36 + 120, 2 * 180 + 8, 3)
