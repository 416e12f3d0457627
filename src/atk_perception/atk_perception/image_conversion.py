"""Image conversion between numpy arrays and sensor_msgs/Image fields.

The core (everything above "Message helpers") is ROS-free: it converts
between a numpy array and the ``(encoding, height, width, step, data)``
fields of a ``sensor_msgs/Image`` so it can be tested with plain pytest.

Supported encodings and the arrays they map to:

==========  ==================  =================
encoding    array shape         dtype
==========  ==================  =================
rgb8, bgr8  (H, W, 3)           uint8
rgba8/bgra8 (H, W, 4)           uint8
mono8       (H, W)              uint8
mono16      (H, W)              uint16
16UC1       (H, W)              uint16 (depth, mm)
32FC1       (H, W)              float32 (depth, m)
==========  ==================  =================

The message helpers at the bottom use ``cv_bridge`` when it is importable
(a full ROS install) and this module's own conversion otherwise (the PyPI
ROS wheels have no cv_bridge). ``sensor_msgs`` is imported only inside
them, so importing this module needs no ROS.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


class ImageConversionError(ValueError):
    """An image message or array that cannot be converted (operator-facing)."""


@dataclass(frozen=True)
class _EncodingInfo:
    dtype: np.dtype
    channels: int


#: encoding name -> element type and number of channels.
ENCODINGS: dict[str, _EncodingInfo] = {
    "rgb8": _EncodingInfo(np.dtype(np.uint8), 3),
    "bgr8": _EncodingInfo(np.dtype(np.uint8), 3),
    "rgba8": _EncodingInfo(np.dtype(np.uint8), 4),
    "bgra8": _EncodingInfo(np.dtype(np.uint8), 4),
    "mono8": _EncodingInfo(np.dtype(np.uint8), 1),
    "mono16": _EncodingInfo(np.dtype(np.uint16), 1),
    "16UC1": _EncodingInfo(np.dtype(np.uint16), 1),
    "32FC1": _EncodingInfo(np.dtype(np.float32), 1),
}

#: encodings that hold a colour or grey picture (trackable); the others are depth.
COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

_HOST_BIG_ENDIAN = sys.byteorder == "big"


def _encoding_info(encoding: str) -> _EncodingInfo:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: "
            f"{', '.join(ENCODINGS)} (set the camera driver to one of these)") from None


def fields_to_array(encoding: str, height: int, width: int, step: int,
                    data: bytes | bytearray | memoryview | np.ndarray | Any,
                    is_bigendian: bool = False) -> np.ndarray:
    """Decode the fields of an Image message into a numpy array.

    Returns ``(H, W)`` for one-channel encodings, ``(H, W, C)`` otherwise
    (see the module table). The result owns its memory (rows are copied out
    of a padded ``step``), in native byte order.
    Raises :class:`ImageConversionError` for an unsupported encoding, an
    empty image, or a ``data`` length that does not match ``height * step``.
    """
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:  # first: an unset message has no encoding either
        raise ImageConversionError(
            f"empty image: {width}x{height} pixels (encoding {encoding!r})")
    info = _encoding_info(encoding)
    row_bytes = width * info.channels * info.dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"image step {step} bytes is smaller than one row of {width} "
            f"{encoding} pixels ({row_bytes} bytes)")
    buf = np.frombuffer(memoryview(data).cast("B") if not isinstance(data, np.ndarray)
                        else data.reshape(-1).view(np.uint8), dtype=np.uint8)
    if buf.size != height * step:
        raise ImageConversionError(
            f"image data has {buf.size} bytes but {width}x{height} {encoding} "
            f"with step {step} needs {height * step}: the message is truncated "
            "or its width/height/step fields are wrong")
    rows = buf.reshape(height, step)[:, :row_bytes]
    dtype = info.dtype.newbyteorder(">" if is_bigendian else "<")
    arr = np.ascontiguousarray(rows).view(dtype)
    arr = arr.astype(info.dtype, copy=False)  # to native order (no-op when equal)
    if info.channels == 1:
        return arr.reshape(height, width).copy()
    return arr.reshape(height, width, info.channels).copy()


def array_to_fields(array: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """Encode an array as Image fields: returns ``(height, width, step, data)``.

    ``array`` must match ``encoding`` (see the module table): shape
    ``(H, W)`` or ``(H, W, 1)`` for one-channel encodings, ``(H, W, C)``
    otherwise, with the exact dtype. Data is little-endian, rows unpadded.
    """
    info = _encoding_info(encoding)
    arr = np.asarray(array)
    if arr.ndim == 3 and info.channels == 1 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    expected_ndim = 2 if info.channels == 1 else 3
    if arr.ndim != expected_ndim or (expected_ndim == 3 and arr.shape[2] != info.channels):
        want = "(H, W)" if info.channels == 1 else f"(H, W, {info.channels})"
        raise ImageConversionError(
            f"array of shape {arr.shape} does not fit encoding {encoding!r} "
            f"(expects {want})")
    if arr.dtype != info.dtype:
        raise ImageConversionError(
            f"array dtype {arr.dtype} does not fit encoding {encoding!r} "
            f"(expects {info.dtype})")
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image: {width}x{height} pixels")
    arr = np.ascontiguousarray(arr.astype(info.dtype.newbyteorder("<"), copy=False))
    step = width * info.channels * info.dtype.itemsize
    return height, width, step, arr.tobytes()


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """Convert a decoded colour/grey image to ``(H, W, 3)`` uint8 RGB.

    Depth encodings (mono16, 16UC1, 32FC1) are refused: the tracker needs the
    colour stream, and rescaling depth into a picture would track noise.
    """
    if encoding not in COLOUR_ENCODINGS:
        if encoding in ENCODINGS:
            raise ImageConversionError(
                f"encoding {encoding!r} is a depth / 16-bit image, not a colour "
                "image: subscribe the tracker to camera/color/image_raw")
        _encoding_info(encoding)  # raises the unsupported-encoding error
    if encoding == "rgb8":
        return np.ascontiguousarray(array)
    if encoding == "bgr8":
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if encoding == "rgba8":
        return cv2.cvtColor(array, cv2.COLOR_RGBA2RGB)
    if encoding == "bgra8":
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)  # mono8


# --------------------------------------------------------------------------
# Message helpers (sensor_msgs imported lazily; cv_bridge when available)
# --------------------------------------------------------------------------

def _cv_bridge():
    """Return a CvBridge instance, or None when cv_bridge is not importable."""
    try:
        from cv_bridge import CvBridge  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return None
    return CvBridge()


_BRIDGE = None
_BRIDGE_CHECKED = False


def _bridge():
    global _BRIDGE, _BRIDGE_CHECKED
    if not _BRIDGE_CHECKED:
        _BRIDGE = _cv_bridge()
        _BRIDGE_CHECKED = True
    return _BRIDGE


def imgmsg_to_array(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` -> numpy array in the message's own encoding.

    Raises :class:`ImageConversionError` for unsupported encodings, empty
    images and inconsistent sizes (before handing anything to cv_bridge, so
    the error is the same with or without it).
    """
    # Validate with our own decoder first: it gives operator-readable errors
    # and is what runs when cv_bridge is absent.
    arr = fields_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                          bool(msg.is_bigendian))
    return arr


def imgmsg_to_rgb8(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` -> ``(H, W, 3)`` uint8 RGB (colour encodings only)."""
    bridge = _bridge()
    if bridge is not None and msg.encoding in COLOUR_ENCODINGS:
        # Validate sizes ourselves (cv_bridge's errors are less explicit).
        fields_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                        bool(msg.is_bigendian))
        return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    return to_rgb8(imgmsg_to_array(msg), msg.encoding)


def array_to_imgmsg(array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """numpy array -> ``sensor_msgs/Image`` with ``encoding`` (and ``header``)."""
    from sensor_msgs.msg import Image  # noqa: PLC0415 (keep the module ROS-free)

    bridge = _bridge()
    if bridge is not None:
        array_to_fields(array, encoding)  # same checks, same errors
        msg = bridge.cv2_to_imgmsg(np.ascontiguousarray(array), encoding=encoding)
    else:
        height, width, step, data = array_to_fields(array, encoding)
        msg = Image()
        msg.height, msg.width, msg.step = height, width, step
        msg.encoding = encoding
        msg.is_bigendian = 0
        msg.data = data
    if header is not None:
        msg.header = header
    return msg
