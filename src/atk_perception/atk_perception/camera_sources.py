"""Camera backends behind one small interface (ROS-free).

This module is the hardware boundary of the camera node: everything that
talks to a device lives here, so the node only converts :class:`Frame` to
messages, and tests use the replay sources (or a stand-in for ``pyk4a``).

Backends:

* :class:`KinectSource`: Azure Kinect through ``pyk4a`` (imported only when
  this backend is opened). Colour as RGB, depth registered to the colour
  camera (``capture.transformed_depth``, uint16 millimetres), device
  timestamps, intrinsics from the factory calibration.
* :class:`VideoFileSource` and :class:`ImageFolderSource`: replay of a
  recording, paced at a given frame rate, optionally looping.

Contract of :meth:`CameraSource.read`: returns a :class:`Frame`, or ``None``
when no frame arrived within ``timeout_s`` (a stall the caller reports and
retries); raises :class:`CameraError` when the device failed (unplugged,
driver error) and must be reopened, and :class:`EndOfStream` when a
non-looping recording is finished. :meth:`CameraSource.problems` says what is
wrong with the frames delivered so far ('' when nothing): a replay skips
damaged video frames and images of another size, and notices a video that
ends before the duration its container declares (truncated), instead of
replaying what it could read as if nothing happened.
"""
from __future__ import annotations

import importlib
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np


class CameraError(RuntimeError):
    """The camera cannot deliver frames (operator-facing message)."""


class EndOfStream(CameraError):
    """A non-looping recording has no more frames."""


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the colour image (ROS CameraInfo conventions).

    ``distortion``: coefficients for ``distortion_model`` (``plumb_bob``:
    k1, k2, p1, p2, k3; ``rational_polynomial``: k1..k6 with p1, p2 after k2).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"width/height: need positive image size, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"fx/fy: focal lengths must be positive, got {self.fx}, {self.fy}")

    @property
    def k(self) -> np.ndarray:
        """(3, 3) float64 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @staticmethod
    def nominal(width: int, height: int, hfov_deg: float = 90.0) -> CameraIntrinsics:
        """Intrinsics of an ideal pinhole with the given horizontal field of view.

        Used for recordings that come without a calibration: good enough for
        an overlay, not for metric work (the camera node says so in its log).
        """
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return CameraIntrinsics(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera resampled to ``width`` x ``height`` pixels."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(width, height, self.fx * sx, self.fy * sy,
                                (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                                self.distortion_model, self.distortion)


@dataclass(frozen=True)
class Frame:
    """One capture.

    color: (H, W, 3) uint8 RGB. depth: (H, W) uint16 millimetres registered
    to the colour image, or None. stamp_ns: time of exposure in nanoseconds
    on the source's clock (the device clock for the Kinect, a monotonic
    host clock for replays); see :class:`DeviceClockMapper`.
    """

    color: np.ndarray
    depth: np.ndarray | None
    stamp_ns: int
    index: int


class CameraSource(ABC):
    """A camera or a recording that delivers :class:`Frame` objects."""

    name: str = "camera"

    @abstractmethod
    def open(self) -> None:
        """Start delivering frames; raise :class:`CameraError` if impossible."""

    @abstractmethod
    def read(self, timeout_s: float) -> Frame | None:
        """Next frame, or None after ``timeout_s`` without one (see module doc)."""

    @abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice and after a failed open."""

    @property
    @abstractmethod
    def intrinsics(self) -> CameraIntrinsics:
        """Intrinsics of the colour image (valid after :meth:`open`)."""

    def interrupt(self) -> None:
        """Wake a blocked :meth:`read` (used on shutdown). Default: nothing."""

    def problems(self) -> str:
        """What is wrong with the frames so far, for the operator; '' when nothing."""
        return ""


# --------------------------------------------------------------------------
# Resolution names shared by the Kinect and the replay sources
# --------------------------------------------------------------------------

#: Azure Kinect colour resolutions, name -> (width, height).
KINECT_RESOLUTIONS: dict[str, tuple[int, int]] = {
    "720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440),
    "1536p": (2048, 1536), "2160p": (3840, 2160), "3072p": (4096, 3072),
}
KINECT_DEPTH_MODES = ("NFOV_UNBINNED", "NFOV_2X2BINNED", "WFOV_2X2BINNED",
                      "WFOV_UNBINNED", "PASSIVE_IR", "OFF")
KINECT_FPS = (5, 15, 30)
#: Azure Kinect manual exposure range in microseconds (0 selects auto).
KINECT_EXPOSURE_RANGE_US = (500, 133330)


def parse_resolution(name: str) -> tuple[int, int] | None:
    """``"native"`` -> None, ``"720p"`` -> (1280, 720), ``"640x480"`` -> (640, 480)."""
    key = name.strip().lower()
    if key == "native":
        return None
    if key in KINECT_RESOLUTIONS:
        return KINECT_RESOLUTIONS[key]
    parts = key.split("x")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        w, h = int(parts[0]), int(parts[1])
        if w >= 16 and h >= 16:
            return w, h
    raise ValueError(
        f"resolution: {name!r} is not 'native', one of {', '.join(KINECT_RESOLUTIONS)}, "
        "or WIDTHxHEIGHT (e.g. 640x480, at least 16x16)")


# --------------------------------------------------------------------------
# Replay sources
# --------------------------------------------------------------------------

class _PacedSource(CameraSource):
    """Shared pacing for recordings: one frame every 1/fps seconds.

    The pacing wait stands in for a real camera's exposure clock; it uses an
    Event so :meth:`interrupt` wakes it immediately on shutdown.
    """

    def __init__(self, fps: float, loop: bool, resolution: str = "native",
                 hfov_deg: float = 90.0) -> None:
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps: must be a positive number, got {fps!r}")
        self._period = 1.0 / fps
        self._loop = bool(loop)
        self._size = parse_resolution(resolution)
        self._hfov = float(hfov_deg)
        self._wake = threading.Event()
        self._next_due = 0.0
        self._index = 0
        self._intrinsics: CameraIntrinsics | None = None

    @property
    def intrinsics(self) -> CameraIntrinsics:
        if self._intrinsics is None:
            raise CameraError(f"{self.name}: intrinsics are known only after open()")
        return self._intrinsics

    def interrupt(self) -> None:
        self._wake.set()

    def _prepare(self, bgr: np.ndarray) -> np.ndarray:
        if self._size is not None and (bgr.shape[1], bgr.shape[0]) != self._size:
            bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_AREA)
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _set_intrinsics(self, rgb: np.ndarray) -> None:
        if self._intrinsics is None:
            self._intrinsics = CameraIntrinsics.nominal(rgb.shape[1], rgb.shape[0], self._hfov)

    def _pace(self, timeout_s: float) -> bool:
        """Wait until the next frame is due; False if that is beyond ``timeout_s``."""
        now = time.monotonic()
        if self._next_due <= now:
            # On time: keep the cadence; late by a period or more: restart it.
            base = self._next_due if now - self._next_due < self._period else now
            self._next_due = base + self._period
            return True
        wait = self._next_due - now
        if wait > timeout_s:
            self._wake.wait(timeout_s)
            return False
        if self._wake.wait(wait):  # interrupted (shutdown)
            return False
        self._next_due += self._period
        return True

    @abstractmethod
    def _next_bgr(self) -> np.ndarray | None:
        """Next raw frame, or None at the end of the recording."""

    @abstractmethod
    def _rewind(self) -> None:
        """Start the recording again."""

    def read(self, timeout_s: float) -> Frame | None:
        if not self._pace(timeout_s):
            return None
        bgr = self._next_bgr()
        if bgr is None:
            if not self._loop:
                trouble = self.problems()
                raise EndOfStream(f"{self.name}: end of recording after {self._index} frames"
                                  + (f" ({trouble})" if trouble else "")
                                  + " (set loop:=true to replay it continuously)")
            self._rewind()
            bgr = self._next_bgr()
            if bgr is None:
                raise CameraError(f"{self.name}: recording has no readable frames")
        rgb = self._prepare(bgr)
        self._set_intrinsics(rgb)
        frame = Frame(color=rgb, depth=None, stamp_ns=time.monotonic_ns(), index=self._index)
        self._index += 1
        return frame


class VideoFileSource(_PacedSource):
    """Replays a video file (anything OpenCV's FFmpeg backend reads).

    Damage: OpenCV's read() fails on a frame the decoder cannot decode and
    succeeds again on the next good one, and fails for good at the end of
    the file. So up to ``MAX_BAD_FRAMES`` failures in a row are skipped and
    counted as damaged frames; the stream ends after that many. At the end
    of the first pass the position of the last frame is compared with the
    duration the container declares (frame count / fps): a file that ends
    more than two frame periods early is truncated. Both are reported by
    :meth:`problems`. (Damage that still decodes, into wrong pixels, cannot
    be seen here.)
    """

    #: Consecutive unreadable frames skipped before the file counts as ended
    #: (corrupted MJPEG/MPEG-4 test files lost runs of 1-5 frames).
    MAX_BAD_FRAMES = 32

    def __init__(self, path: str | Path, fps: float = 15.0, loop: bool = True,
                 resolution: str = "native", hfov_deg: float = 90.0) -> None:
        super().__init__(fps, loop, resolution, hfov_deg)
        self.path = Path(path)
        self.name = f"video {self.path.name}"
        self._cap: cv2.VideoCapture | None = None
        self._declared_ms: float | None = None
        self._frame_ms = 0.0
        self._last_ms = 0.0
        self._first_pass = True
        self._damaged = 0
        self._truncated = ""

    def open(self) -> None:
        if not self.path.is_file():
            raise CameraError(f"video file {self.path} does not exist (check video_path)")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise CameraError(f"OpenCV cannot open video file {self.path} "
                              "(unsupported container/codec?)")
        self._cap = cap
        self._wake.clear()
        self._next_due = 0.0
        count, rate = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
        ok = math.isfinite(count) and math.isfinite(rate) and count > 0 and rate > 0
        self._declared_ms = count / rate * 1000.0 if ok else None
        self._frame_ms = 1000.0 / rate if ok else 0.0
        self._last_ms = 0.0
        self._first_pass, self._damaged, self._truncated = True, 0, ""

    def _next_bgr(self) -> np.ndarray | None:
        if self._cap is None:
            raise CameraError(f"{self.name}: read() before open()")
        for failed in range(self.MAX_BAD_FRAMES):
            ok, bgr = self._cap.read()
            if ok:
                if self._first_pass:
                    self._damaged += failed
                    self._last_ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
                return bgr
        if self._first_pass:
            self._first_pass = False
            if (self._declared_ms is not None and self._index > 0
                    and self._last_ms + 2 * self._frame_ms < self._declared_ms):
                self._truncated = (f"the video ends at {self._last_ms / 1000:.2f} s of the "
                                   f"{self._declared_ms / 1000:.2f} s its container declares: the file "
                                   "is truncated or damaged")
        return None

    def _rewind(self) -> None:
        if self._cap is not None:
            self._first_pass = False
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def problems(self) -> str:
        parts = []
        if self._damaged:
            parts.append(f"{self._damaged} damaged frame(s) could not be decoded and were skipped")
        if self._truncated:
            parts.append(self._truncated + (", only the readable part is replayed" if self._loop else ""))
        return "; ".join(parts)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageFolderSource(_PacedSource):
    """Replays the images of a folder in file-name order."""

    def __init__(self, path: str | Path, fps: float = 15.0, loop: bool = True,
                 resolution: str = "native", hfov_deg: float = 90.0) -> None:
        super().__init__(fps, loop, resolution, hfov_deg)
        self.path = Path(path)
        self.name = f"folder {self.path.name}"
        self._files: list[Path] = []
        self._pos = 0
        self._shape: tuple[int, ...] | None = None
        self._odd: dict[str, tuple[int, int]] = {}  # file name -> (W, H), other size than the first
        self._unreadable: set[str] = set()

    def open(self) -> None:
        if not self.path.is_dir():
            raise CameraError(f"image folder {self.path} does not exist (check video_path)")
        self._files = sorted(p for p in self.path.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise CameraError(f"image folder {self.path} holds no images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        self._pos = 0
        self._wake.clear()
        self._next_due = 0.0
        self._shape, self._odd, self._unreadable = None, {}, set()

    def _next_bgr(self) -> np.ndarray | None:
        # Frames of two sizes (two recordings in one folder, a stray
        # screenshot) would reach the tracker interleaved; the first image
        # sets the size and the others are skipped and reported.
        while self._pos < len(self._files):
            path = self._files[self._pos]
            self._pos += 1
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                self._unreadable.add(path.name)
                continue
            if self._shape is None:
                self._shape = bgr.shape
            if bgr.shape != self._shape:
                self._odd[path.name] = (bgr.shape[1], bgr.shape[0])
                continue
            return bgr
        return None

    def problems(self) -> str:
        parts = []
        if self._odd:
            name, (w, h) = sorted(self._odd.items())[0]
            parts.append(f"skipped {len(self._odd)} image(s) whose size differs from the first image's "
                         f"{self._shape[1]}x{self._shape[0]} (e.g. {name}: {w}x{h}): the folder mixes "
                         "recordings")
        if self._unreadable:
            parts.append(f"skipped {len(self._unreadable)} unreadable image(s) (e.g. "
                         f"{sorted(self._unreadable)[0]})")
        return "; ".join(parts)

    def _rewind(self) -> None:
        self._pos = 0

    def close(self) -> None:
        self._files = []


# --------------------------------------------------------------------------
# Azure Kinect
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class KinectConfig:
    """Azure Kinect settings; values follow the device's own limits."""

    resolution: str = "720p"
    fps: int = 30
    depth_mode: str = "NFOV_UNBINNED"
    exposure_us: int = 0  # 0: auto exposure
    device_id: int = 0

    def __post_init__(self) -> None:
        if self.resolution.lower() not in KINECT_RESOLUTIONS:
            raise ValueError(f"resolution: {self.resolution!r} is not an Azure Kinect "
                             f"colour resolution ({', '.join(KINECT_RESOLUTIONS)})")
        if self.fps not in KINECT_FPS:
            raise ValueError(f"fps: the Azure Kinect runs at 5, 15 or 30, got {self.fps!r}")
        if self.depth_mode not in KINECT_DEPTH_MODES:
            raise ValueError(f"depth_mode: {self.depth_mode!r} is not one of "
                             f"{', '.join(KINECT_DEPTH_MODES)}")
        # Device limit: 3072p colour and WFOV_UNBINNED depth run at most at 15 fps.
        if self.fps == 30 and (self.resolution.lower() == "3072p"
                               or self.depth_mode == "WFOV_UNBINNED"):
            raise ValueError(f"fps: 30 is not supported with resolution {self.resolution!r} / "
                             f"depth_mode {self.depth_mode!r} (max 15)")
        lo, hi = KINECT_EXPOSURE_RANGE_US
        if self.exposure_us != 0 and not lo <= self.exposure_us <= hi:
            raise ValueError(f"exposure_us: {self.exposure_us!r} outside {lo}..{hi} "
                             "(0 selects auto exposure)")
        if self.device_id < 0:
            raise ValueError(f"device_id: must be >= 0, got {self.device_id!r}")


PYK4A_MISSING = (
    "the 'kinect' camera backend needs the pyk4a package and the Azure Kinect "
    "Sensor SDK (libk4a). Install the SDK from Microsoft, then `pip install pyk4a`; "
    "or use backend:=video to replay a recording")


class KinectSource(CameraSource):
    """Azure Kinect through pyk4a (imported in :meth:`open`, not at import time)."""

    def __init__(self, config: KinectConfig) -> None:
        self.config = config
        self.name = f"Azure Kinect #{config.device_id}"
        self._k4a = None
        self._pyk4a = None
        self._intrinsics: CameraIntrinsics | None = None
        self._index = 0

    def _import(self):
        try:
            return importlib.import_module("pyk4a")
        except ImportError as exc:
            raise CameraError(f"{PYK4A_MISSING} ({exc})") from exc

    def open(self) -> None:
        pyk4a = self._pyk4a = self._import()
        cfg = self.config
        res_enum = getattr(pyk4a.ColorResolution, f"RES_{cfg.resolution.upper()}")
        config = pyk4a.Config(
            color_resolution=res_enum,
            color_format=pyk4a.ImageFormat.COLOR_BGRA32,
            depth_mode=getattr(pyk4a.DepthMode, cfg.depth_mode),
            camera_fps=getattr(pyk4a.FPS, f"FPS_{cfg.fps}"),
            # Colour and depth of one capture belong together (registration).
            synchronized_images_only=cfg.depth_mode not in ("OFF", "PASSIVE_IR"),
        )
        k4a = pyk4a.PyK4A(config=config, device_id=cfg.device_id)
        try:
            k4a.start()
        except Exception as exc:  # pyk4a raises K4AException and friends
            raise CameraError(f"{self.name}: cannot start ({type(exc).__name__}: {exc}); "
                              "is it plugged in, powered, and not used by another program?") from exc
        try:
            if cfg.exposure_us == 0:
                k4a.exposure_mode_auto = True
            else:
                k4a.exposure = int(cfg.exposure_us)
            calib = k4a.calibration
            k = np.asarray(calib.get_camera_matrix(pyk4a.CalibrationType.COLOR), dtype=float)
            dist = np.asarray(calib.get_distortion_coefficients(pyk4a.CalibrationType.COLOR),
                              dtype=float).ravel()
        except Exception as exc:
            k4a.stop()
            raise CameraError(f"{self.name}: cannot configure or read calibration "
                              f"({type(exc).__name__}: {exc})") from exc
        w, h = KINECT_RESOLUTIONS[cfg.resolution.lower()]
        # The factory calibration uses the Brown-Conrady model with k1..k6, p1, p2
        # (OpenCV order k1 k2 p1 p2 k3 k4 k5 k6): ROS calls it rational_polynomial.
        model = "rational_polynomial" if dist.size >= 8 else "plumb_bob"
        self._intrinsics = CameraIntrinsics(w, h, float(k[0, 0]), float(k[1, 1]),
                                            float(k[0, 2]), float(k[1, 2]), model,
                                            tuple(float(d) for d in dist))
        self._k4a = k4a

    def read(self, timeout_s: float) -> Frame | None:
        if self._k4a is None:
            raise CameraError(f"{self.name}: read() before open()")
        pyk4a = self._pyk4a
        try:
            capture = self._k4a.get_capture(timeout=max(1, int(timeout_s * 1000)))
        except pyk4a.K4ATimeoutException:
            return None
        except Exception as exc:
            raise CameraError(f"{self.name}: capture failed ({type(exc).__name__}: {exc})") from exc
        bgra = capture.color
        if bgra is None:
            return None
        rgb = cv2.cvtColor(np.asarray(bgra), cv2.COLOR_BGRA2RGB)
        depth = None
        if self.config.depth_mode not in ("OFF", "PASSIVE_IR"):
            td = capture.transformed_depth
            depth = None if td is None else np.asarray(td, dtype=np.uint16)
        frame = Frame(color=rgb, depth=depth,
                      stamp_ns=int(capture.color_timestamp_usec) * 1000, index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._k4a is not None:
            try:
                self._k4a.stop()
            except Exception:  # noqa: BLE001 (the device may already be gone)
                pass
            self._k4a = None

    @property
    def intrinsics(self) -> CameraIntrinsics:
        if self._intrinsics is None:
            raise CameraError(f"{self.name}: intrinsics are known only after open()")
        return self._intrinsics


# --------------------------------------------------------------------------
# Clock mapping and retry policy (used by the camera node)
# --------------------------------------------------------------------------

class DeviceClockMapper:
    """Maps a source clock (ns) to the host/ROS clock (ns).

    The offset is fixed at the first frame so intervals between stamps are the
    device's own (exposure-accurate); it is re-estimated when the two clocks
    disagree by more than ``resync_s`` (device restarted, clock jump).
    """

    def __init__(self, resync_s: float = 0.5) -> None:
        self.resync_ns = int(resync_s * 1e9)
        self._offset: int | None = None

    def reset(self) -> None:
        self._offset = None

    def to_host(self, device_ns: int, host_now_ns: int) -> int:
        if self._offset is None or abs(device_ns + self._offset - host_now_ns) > self.resync_ns:
            self._offset = host_now_ns - device_ns
        return device_ns + self._offset


@dataclass
class RetryPolicy:
    """Exponential backoff between attempts to (re)open a camera."""

    initial_s: float = 0.5
    max_s: float = 10.0
    factor: float = 2.0
    _next: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.initial_s > 0:
            raise ValueError(f"initial_s: must be > 0, got {self.initial_s!r}")
        if not self.max_s >= self.initial_s:
            raise ValueError(f"max_s: must be >= initial_s ({self.initial_s}), got {self.max_s!r}")
        if not self.factor >= 1.0:
            raise ValueError(f"factor: must be >= 1, got {self.factor!r}")
        self._next = self.initial_s

    def next_delay(self) -> float:
        """Delay before the next attempt (grows until ``max_s``)."""
        delay = self._next
        self._next = min(self.max_s, self._next * self.factor)
        return delay

    def succeeded(self) -> None:
        self._next = self.initial_s


def make_camera_source(backend: str, *, video_path: str = "", loop: bool = True,
                       resolution: str = "native", fps: float = 15.0,
                       depth_mode: str = "NFOV_UNBINNED", exposure_us: int = 0,
                       device_id: int = 0) -> CameraSource:
    """Build the source for ``backend`` (``kinect`` or ``video``).

    ``video`` takes a video file or a folder of images in ``video_path``.
    Raises ValueError naming the bad field.
    """
    if backend == "kinect":
        res = "720p" if resolution == "native" else resolution
        return KinectSource(KinectConfig(res, int(fps), depth_mode, int(exposure_us),
                                         int(device_id)))
    if backend == "video":
        if not video_path:
            raise ValueError("video_path: required for backend 'video' (a video file "
                             "or a folder of images)")
        path = Path(video_path).expanduser()
        cls = ImageFolderSource if path.is_dir() else VideoFileSource
        return cls(path, fps=float(fps), loop=loop, resolution=resolution)
    raise ValueError(f"backend: {backend!r} is not one of kinect, video, none")
