"""The privileged ``oracle`` h_C with an injected ground-truth source.

The stand-in source is a flat world shifted by a per-frame offset that the
frame carries in its first pixel; points left of x = 20 in the world are
"covered" (hidden). The simulator's own source is tested in atk_bringup.
"""
from __future__ import annotations

import numpy as np
import pytest

from atk_perception.backends import BACKENDS, make_correspondence
from atk_perception.correspondence import CorrespondenceError
from atk_perception.oracle_backend import OracleCorrespondence


def frame(offset: int) -> np.ndarray:
    img = np.zeros((60, 80, 3), np.uint8)
    img[0, 0, 0] = offset
    return img


class ShiftedWorld:
    def __init__(self) -> None:
        self.anchor_calls = 0

    def anchor(self, image, points):
        self.anchor_calls += 1
        return np.asarray(points, np.float64) - image[0, 0, 0]

    def locate(self, anchors, image):
        pts = anchors + image[0, 0, 0]
        return pts, anchors[:, 0] >= 20


def test_oracle_is_a_named_backend_with_one_option():
    assert "oracle" in BACKENDS
    src = ShiftedWorld()
    hc = make_correspondence("oracle", ground_truth=src)
    assert isinstance(hc, OracleCorrespondence) and hc.source is src
    with pytest.raises(ValueError, match="unknown option"):
        make_correspondence("oracle", ground_truth=src, window=5)


def test_transfer_and_update_return_the_truth_with_confidence_one_or_zero():
    src = ShiftedWorld()
    hc = OracleCorrespondence(src)
    tpl = np.array([[30.0, 10.0], [10.0, 20.0], [75.0, 40.0]], np.float32)
    f1 = frame(3)
    pts, conf = hc.transfer(frame(0), tpl, f1)
    np.testing.assert_allclose(pts, tpl + 3)
    np.testing.assert_array_equal(conf, [1, 0, 1])
    hc.reset(f1, pts)
    assert src.anchor_calls == 1          # the transfer's own anchors are kept
    r = hc.update(frame(10))
    # the third point went past the right border: clamped, not visible
    np.testing.assert_allclose(r.points, [[40, 20], [20, 30], [79, 50]])
    np.testing.assert_array_equal(r.visible, [True, False, False])
    np.testing.assert_array_equal(r.confidence, [1, 0, 0])


def test_reset_with_other_points_anchors_them_on_that_frame():
    src = ShiftedWorld()
    hc = OracleCorrespondence(src)
    hc.reset(frame(5), np.array([[40.0, 5.0]], np.float32))
    np.testing.assert_allclose(hc.update(frame(7)).points, [[42, 7]])
    with pytest.raises(CorrespondenceError, match="before reset"):
        OracleCorrespondence(src).update(frame(0))


def test_source_errors_become_correspondence_errors():
    class Refusing(ShiftedWorld):
        def locate(self, anchors, image):
            raise ValueError("not a simulated frame")

    hc = OracleCorrespondence(Refusing())
    with pytest.raises(CorrespondenceError, match="not a simulated frame"):
        hc.transfer(frame(0), np.zeros((1, 2), np.float32), frame(1))
