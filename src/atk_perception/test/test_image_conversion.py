"""numpy <-> sensor_msgs/Image conversion: every encoding, padding, errors."""
from __future__ import annotations

import numpy as np
import pytest

from atk_perception.image_conversion import (
    ENCODINGS, ImageConversionError, array_to_fields, array_to_imgmsg, fields_to_array,
    imgmsg_to_array, imgmsg_to_rgb8, to_rgb8)

RNG = np.random.default_rng(4)


def _random(encoding: str, h: int = 5, w: int = 7) -> np.ndarray:
    info = ENCODINGS[encoding]
    shape = (h, w) if info.channels == 1 else (h, w, info.channels)
    if info.dtype == np.float32:
        return RNG.normal(1.5, 0.3, shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(info.dtype).max, shape, dtype=info.dtype)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip_every_encoding(encoding: str) -> None:
    arr = _random(encoding)
    h, w, step, data = array_to_fields(arr, encoding)
    assert (h, w) == arr.shape[:2]
    assert step == w * ENCODINGS[encoding].channels * ENCODINGS[encoding].dtype.itemsize
    back = fields_to_array(encoding, h, w, step, data)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_padded_rows_are_skipped() -> None:
    arr = _random("rgb8", 4, 3)
    pad = 7
    rows = [np.concatenate([row.ravel(), np.full(pad, 255, np.uint8)]) for row in arr]
    data = np.concatenate(rows).tobytes()
    back = fields_to_array("rgb8", 4, 3, 3 * 3 + pad, data)
    np.testing.assert_array_equal(back, arr)


def test_big_endian_depth_is_decoded() -> None:
    depth = np.array([[1, 256], [1000, 65535]], np.uint16)
    data = depth.astype(">u2").tobytes()
    back = fields_to_array("16UC1", 2, 2, 4, data, is_bigendian=True)
    np.testing.assert_array_equal(back, depth)
    assert back.dtype == np.uint16 and back.dtype.isnative


def test_to_rgb8_channel_orders() -> None:
    rgb = _random("rgb8")
    np.testing.assert_array_equal(to_rgb8(rgb[:, :, ::-1].copy(), "bgr8"), rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)])
    np.testing.assert_array_equal(to_rgb8(rgba, "rgba8"), rgb)
    bgra = np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 9, np.uint8)])
    np.testing.assert_array_equal(to_rgb8(bgra, "bgra8"), rgb)
    mono = rgb[:, :, 0].copy()
    out = to_rgb8(mono, "mono8")
    assert out.shape == (*mono.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], mono)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "mono16"])
def test_depth_is_not_a_colour_image(encoding: str) -> None:
    with pytest.raises(ImageConversionError, match="not a colour image"):
        to_rgb8(_random(encoding), encoding)


def test_errors_say_what_is_wrong() -> None:
    with pytest.raises(ImageConversionError, match="unsupported image encoding 'yuv422'"):
        fields_to_array("yuv422", 2, 2, 4, b"\0" * 8)
    with pytest.raises(ImageConversionError, match="empty image: 0x0"):
        fields_to_array("rgb8", 0, 0, 0, b"")
    with pytest.raises(ImageConversionError, match="has 10 bytes but 2x2 rgb8 with step 6 needs 12"):
        fields_to_array("rgb8", 2, 2, 6, b"\0" * 10)
    with pytest.raises(ImageConversionError, match="step 5 bytes is smaller"):
        fields_to_array("rgb8", 2, 2, 5, b"\0" * 10)
    with pytest.raises(ImageConversionError, match="dtype float64"):
        array_to_fields(np.zeros((2, 2)), "32FC1")
    with pytest.raises(ImageConversionError, match=r"expects \(H, W, 3\)"):
        array_to_fields(np.zeros((2, 2), np.uint8), "rgb8")


def test_message_helpers_round_trip() -> None:
    from std_msgs.msg import Header

    rgb = _random("rgb8", 6, 9)
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = array_to_imgmsg(rgb[:, :, ::-1].copy(), "bgr8", header)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("bgr8", 6, 9, 27)
    assert msg.header.stamp.sec == 12 and msg.header.frame_id == "cam"
    np.testing.assert_array_equal(imgmsg_to_rgb8(msg), rgb)
    depth = _random("16UC1", 3, 4)
    np.testing.assert_array_equal(imgmsg_to_array(array_to_imgmsg(depth, "16UC1")), depth)
    msg.height = 7  # data no longer fits
    with pytest.raises(ImageConversionError, match="truncated"):
        imgmsg_to_rgb8(msg)
