"""CoTracker3 backend of h_C: an adapter over the official online predictor (ROS-free).

For GPU deployment. The predictor is
``cotracker.predictor.CoTrackerOnlinePredictor`` from
https://github.com/facebookresearch/co-tracker. That package is not on PyPI
and its code and weights are licensed CC BY-NC 4.0 (non-commercial use
only), so it is not a dependency of atk-ros: it is imported only when this
backend is built. Install it with
``pip install git+https://github.com/facebookresearch/co-tracker`` and give
the path of a checkpoint you downloaded yourself (e.g. ``scaled_online.pth``);
nothing is downloaded at run time.

The call contract of the online predictor, which this adapter follows:

* ``model.step``: frames between two results (``window_len // 2``);
* ``model(video_chunk=..., is_first_step=True, queries=...)`` only
  initialises and returns ``(None, None)``; ``video_chunk`` is float
  ``(1, T, 3, H, W)`` RGB in 0..255, ``queries`` float ``(1, N, 3)`` rows
  ``[t, x, y]`` (frame index, pixels);
* then ``model(video_chunk=...)`` with the last ``2 * step`` frames, once every
  ``step`` frames from the ``2 * step``-th frame on, returns ``(pred_tracks
  (1, T', N, 2) pixels, pred_visibility (1, T', N) bool)`` over every frame
  processed so far (the newest frame is the last).

The official predictor thresholds visibility x confidence at a hard-coded
0.6 before returning booleans. To make the threshold a config field
(``visibility_threshold``), the adapter records the raw heads of the wrapped
network (``model.model``: CoTracker3 returns tracks, visibility, confidence;
CoTracker2 tracks, visibility) and thresholds their product itself. A
predictor without that inner network gives booleans only: confidence is then
1 for visible points and 0 otherwise.

Between two results ``update`` returns the last estimate, its confidence
multiplied by ``confidence_decay`` per frame since that result; before the
first result (the first ``2 * step - 1`` frames after ``reset``) that
estimate is the reset points.

``transfer`` (one-off alignment from the canonical template) is delegated to
the CPU backend's SIFT matching, motion grouping and local affine fit
(:meth:`atk_perception.cpu_tracker.CpuTracker.transfer`): CoTracker tracks
through time and has no template-to-image matching of its own.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from atk_perception.correspondence import Correspondence, CorrespondenceError, TrackResult
from atk_perception.cpu_tracker import CpuTracker, CpuTrackerConfig
from atk_perception.image_checks import check_image, check_points, check_same_size

INSTALL_HINT = (
    "install it with `pip install git+https://github.com/facebookresearch/co-tracker` "
    "(not on PyPI; code and weights are CC BY-NC 4.0: non-commercial use only), "
    "or use the 'cpu' backend")


@dataclass
class CoTrackerConfig:
    """Settings of the CoTracker3 backend."""

    checkpoint: str = ""
    """Path of a local CoTracker checkpoint file (e.g. scaled_online.pth). Required."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cuda', 'cuda:N' or 'cpu'."""
    window_len: int = 16
    """Sliding window length of the online model (the released CoTracker3 online model uses 16)."""
    v2: bool = False
    """True for a CoTracker2 checkpoint (no confidence head)."""
    visibility_threshold: float = 0.6
    """A point is visible when visibility x confidence exceeds this (the official predictor's fixed value is 0.6)."""
    confidence_decay: float = 0.9
    """Confidence factor per frame since the last CoTracker result."""
    transfer: CpuTrackerConfig = field(default_factory=CpuTrackerConfig)
    """Settings of the CPU SIFT transfer used by ``transfer``."""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"CoTrackerConfig.{name} = {getattr(self, name)!r}: {rule}")

        need(isinstance(self.checkpoint, (str, os.PathLike)) and str(self.checkpoint) != "",
             "checkpoint", "name a local checkpoint file (e.g. checkpoints/scaled_online.pth)")
        need(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda")
                                               or self.device.startswith("cuda:")),
             "device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        need(isinstance(self.window_len, int) and self.window_len >= 2
             and self.window_len % 2 == 0, "window_len", "must be an even integer >= 2")
        need(0.0 <= self.visibility_threshold < 1.0, "visibility_threshold",
             "must be in [0, 1)")
        need(0.0 < self.confidence_decay <= 1.0, "confidence_decay", "must be in (0, 1]")
        need(isinstance(self.transfer, CpuTrackerConfig), "transfer",
             "must be a CpuTrackerConfig")


PredictorFactory = Callable[[CoTrackerConfig], Any]
"""Builds the online predictor from the config (the official one by default)."""


def official_predictor(config: CoTrackerConfig) -> Any:
    """Build ``cotracker.predictor.CoTrackerOnlinePredictor`` from ``config.checkpoint``."""
    try:
        from cotracker.predictor import CoTrackerOnlinePredictor
    except ImportError as exc:
        raise ImportError(
            f"the CoTracker backend needs the 'cotracker' package ({exc}); {INSTALL_HINT}"
        ) from exc
    return CoTrackerOnlinePredictor(checkpoint=str(config.checkpoint), v2=config.v2,
                                    window_len=config.window_len)


def _head_recorder(inner: Any) -> Any:
    """Wrap the predictor's network so that its raw output heads can be read back."""
    import torch

    class HeadRecorder(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.last_output: Any = None

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            out = self.net(*args, **kwargs)
            self.last_output = out
            return out

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                # init_video_online_processing, window_len, model_resolution...
                return getattr(super().__getattr__("net"), name)

    return HeadRecorder(inner)


class CoTrackerBackend(Correspondence):
    """h_C over CoTracker3's online predictor (see the module docstring)."""

    def __init__(self, config: CoTrackerConfig,
                 predictor_factory: PredictorFactory | None = None) -> None:
        import torch  # a project dependency; imported here to keep `import` light

        self.cfg = config
        if not os.path.isfile(config.checkpoint):
            raise FileNotFoundError(
                f"CoTracker checkpoint {str(config.checkpoint)!r} not found: download a "
                "CoTracker3 online checkpoint (e.g. scaled_online.pth from "
                "https://huggingface.co/facebook/cotracker3) and name its local path; "
                "nothing is downloaded at run time")
        if config.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        factory = predictor_factory if predictor_factory is not None else official_predictor
        self.model = factory(config)
        if hasattr(self.model, "to"):
            self.model = self.model.to(self.device)
        self.step = int(self.model.step)
        if self.step < 1:
            raise ValueError(f"CoTracker predictor reports step = {self.step}; expected >= 1")
        self._recorder = None
        inner = getattr(self.model, "model", None)
        if isinstance(inner, torch.nn.Module):
            self._recorder = _head_recorder(inner)
            self.model.model = self._recorder
        self._cpu = CpuTracker(config.transfer)
        self._frames: collections.deque = collections.deque(maxlen=2 * self.step)
        self._shape: tuple[int, int] | None = None
        self._n_frames = 0
        self._points: np.ndarray | None = None
        self._conf: np.ndarray | None = None
        self._visible: np.ndarray | None = None
        self._since_result = 0

    def transfer(self, template_image: np.ndarray, template_points: np.ndarray,
                 image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Delegated to the CPU SIFT transfer (CoTracker has no template matching)."""
        return self._cpu.transfer(template_image, template_points, image)

    def _to_tensor(self, image: np.ndarray) -> Any:
        """(H, W, 3) or (H, W) uint8 -> float (3, H, W) RGB 0..255 on the device."""
        import torch

        rgb = image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(
            image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(
            2, 0, 1).float()

    def reset(self, image: np.ndarray, points: np.ndarray) -> None:
        """Start a new video at ``image`` (frame 0) with queries ``points`` (N, 2)."""
        import torch

        gray = check_image(image, "image")
        pts = check_points(points, gray.shape, "points")
        self._shape = gray.shape
        self._frames.clear()
        frame = self._to_tensor(image)
        self._frames.append(frame)
        self._n_frames = 1
        self._points = pts.copy()
        self._conf = np.ones(len(pts), np.float32)
        self._visible = np.ones(len(pts), bool)
        self._since_result = 0
        if len(pts) == 0:
            return
        queries = torch.zeros((1, len(pts), 3), dtype=torch.float32, device=self.device)
        queries[0, :, 1:] = torch.from_numpy(pts).to(self.device)  # t = 0: the reset frame
        out = self.model(video_chunk=frame[None, None], is_first_step=True, queries=queries)
        if out is not None and out[0] is not None:
            raise RuntimeError("CoTracker predictor returned tracks on its first step; "
                               "expected (None, None) (is this the online predictor?)")

    def update(self, image: np.ndarray) -> TrackResult:
        """Feed the next frame; a new estimate every ``step`` frames, else the last one decayed."""
        if self._shape is None or self._points is None:
            raise CorrespondenceError("update() called before reset(): give the tracker "
                                      "a first image and its keypoints")
        gray = check_image(image, "image")
        check_same_size(np.empty(self._shape, np.uint8), gray,
                        "the tracked stream's first image", "image")
        self._frames.append(self._to_tensor(image))
        self._n_frames += 1
        self._since_result += 1
        n = len(self._points)
        if (n > 0 and self._n_frames >= 2 * self.step
                and self._n_frames % self.step == 0):
            self._run_window()
        conf = self._conf * np.float32(self.cfg.confidence_decay ** self._since_result)
        return TrackResult(self._points.copy(), conf.astype(np.float32),
                           self._visible.copy())

    def _run_window(self) -> None:
        import torch

        chunk = torch.stack(list(self._frames))[None]  # (1, 2*step, 3, H, W)
        if self._recorder is not None:
            self._recorder.last_output = None
        with torch.no_grad():
            tracks, vis = self.model(video_chunk=chunk)
        n = len(self._points)
        if tracks is None or tracks.ndim != 4 or tracks.shape[2] < n or tracks.shape[3] != 2:
            raise RuntimeError(
                "CoTracker predictor returned tracks of shape "
                f"{None if tracks is None else tuple(tracks.shape)}; expected (1, T, {n}, 2)")
        pts = tracks[0, -1, :n].detach().float().cpu().numpy().astype(np.float32)
        prob = self._raw_probability(n)
        if prob is not None:
            visible = prob > self.cfg.visibility_threshold
            conf = prob
        else:
            visible = vis[0, -1, :n].detach().cpu().numpy().astype(bool)
            conf = visible.astype(np.float32)
        self._points, self._conf, self._visible = pts, conf.astype(np.float32), visible
        self._since_result = 0

    def _raw_probability(self, n: int) -> np.ndarray | None:
        """visibility x confidence (N,) of the newest frame from the recorded heads, if any."""
        out = None if self._recorder is None else self._recorder.last_output
        if not isinstance(out, tuple) or len(out) < 3:
            return None
        vis = out[1]
        prob = vis if self.cfg.v2 or len(out) < 4 else vis * out[2]
        prob = prob.detach().float()
        if prob.ndim == 4:  # (B, T, N, 1)
            prob = prob[..., 0]
        return np.clip(prob[0, -1, :n].cpu().numpy(), 0.0, 1.0).astype(np.float32)
