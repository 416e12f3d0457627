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
estimate is the reset points. A point is ``visible`` only while that decayed
confidence still exceeds ``visibility_threshold`` (the rule the results
themselves follow), so a stale estimate is never reported visible with a
confidence below the threshold.

The checkpoint is read before the predictor is built (``torch.load`` with
``weights_only=True``: tensors only, no pickled code): its architecture
(CoTracker3: a ``corr_mlp``; CoTracker2: a ``track_feat_updater``) must match
``v2``, and its ``time_emb`` fixes ``window_len`` (16 for the released
CoTracker3 online model, 8 for CoTracker2), so ``window_len = 0`` (the
default) takes it from there and any other value must equal it. A damaged
file, a checkpoint of the other version or a refused state dict raise
:class:`CheckpointError` (a ValueError) with one line that says what to
change, and ``device: cuda`` without CUDA is refused the same way before any
tensor moves.

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
    window_len: int = 0
    """Sliding window length of the online model. It is fixed by the checkpoint (the released
    CoTracker3 online model: 16, CoTracker2: 8): 0 takes the checkpoint's; another value must equal it."""
    v2: bool = False
    """True for a CoTracker2 checkpoint (no confidence head); must match the checkpoint."""
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
        need(isinstance(self.window_len, int) and not isinstance(self.window_len, bool)
             and (self.window_len == 0 or (self.window_len >= 2 and self.window_len % 2 == 0)),
             "window_len", "must be 0 (the checkpoint's) or an even integer >= 2")
        need(isinstance(self.v2, bool), "v2", "must be true or false")
        need(0.0 <= self.visibility_threshold < 1.0, "visibility_threshold",
             "must be in [0, 1)")
        need(0.0 < self.confidence_decay <= 1.0, "confidence_decay", "must be in (0, 1]")
        need(isinstance(self.transfer, CpuTrackerConfig), "transfer",
             "must be a CpuTrackerConfig")


PredictorFactory = Callable[[CoTrackerConfig], Any]
"""Builds the online predictor from the config (the official one by default)."""


class CheckpointError(ValueError):
    """A CoTracker checkpoint that cannot be used as configured (one line: what to change)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint fixes: the architecture version and the sliding window length."""

    version: int  # 2 or 3
    window_len: int


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Version and window length of a CoTracker checkpoint, read without building the model.

    ``torch.load(weights_only=True)``: only tensors and containers are
    unpickled. Raises CheckpointError for a file that is not a CoTracker
    state dict.
    """
    import torch

    name = str(path)
    try:
        state = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the same operator problem
        raise CheckpointError(
            f"CoTracker checkpoint {name!r} cannot be read ({type(exc).__name__}: {_one_line(exc, 100)}): "
            "the file is damaged or not a PyTorch checkpoint; download it again") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints wrap the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"CoTracker checkpoint {name!r} holds no state dict of tensors: not a CoTracker "
                              "checkpoint")
    emb = state.get("time_emb")
    if emb is None or emb.ndim != 3:
        raise CheckpointError(f"CoTracker checkpoint {name!r} has no time_emb (1, window_len, C) tensor: not a "
                              "CoTracker2/3 online checkpoint")
    if any(k.startswith("corr_mlp.") for k in state):
        version = 3
    elif any(k.startswith("track_feat_updater.") for k in state):
        version = 2
    else:
        raise CheckpointError(f"CoTracker checkpoint {name!r} is neither CoTracker3 (corr_mlp) nor CoTracker2 "
                              "(track_feat_updater)")
    return CheckpointInfo(version, int(emb.shape[1]))


def check_checkpoint(config: CoTrackerConfig) -> CheckpointInfo:
    """The checkpoint's version and window length, refused (CheckpointError) where config disagrees."""
    info = inspect_checkpoint(config.checkpoint)
    name = str(config.checkpoint)
    if info.version == 2 and not config.v2:
        raise CheckpointError(f"CoTracker checkpoint {name!r} is a CoTracker2 checkpoint: set v2 (tracker "
                              "parameter cotracker_v2: true) or use a CoTracker3 online checkpoint")
    if info.version == 3 and config.v2:
        raise CheckpointError(f"CoTracker checkpoint {name!r} is a CoTracker3 checkpoint, but v2 is set: clear it "
                              "(tracker parameter cotracker_v2: false)")
    if config.window_len not in (0, info.window_len):
        raise CheckpointError(f"window_len {config.window_len} does not match checkpoint {name!r}, whose window is "
                              f"{info.window_len} frames: the checkpoint fixes it, leave window_len at 0")
    return info


def official_predictor(config: CoTrackerConfig) -> Any:
    """Build ``cotracker.predictor.CoTrackerOnlinePredictor`` from ``config.checkpoint``.

    The checkpoint is checked first (:func:`check_checkpoint`); the window
    length is the checkpoint's. A state dict the predictor still refuses is
    reported as CheckpointError in one line.
    """
    info = check_checkpoint(config)
    try:
        from cotracker.predictor import CoTrackerOnlinePredictor
    except ImportError as exc:
        raise ImportError(
            f"the CoTracker backend needs the 'cotracker' package ({exc}); {INSTALL_HINT}"
        ) from exc
    try:
        return CoTrackerOnlinePredictor(checkpoint=str(config.checkpoint), v2=config.v2,
                                        window_len=info.window_len)
    except (RuntimeError, KeyError, ValueError) as exc:  # load_state_dict: missing/unexpected keys, sizes
        raise CheckpointError(
            f"CoTracker checkpoint {str(config.checkpoint)!r} does not fit the CoTracker{info.version} online "
            f"model (window {info.window_len}): {_one_line(exc)}") from None


def resolve_device(device: str) -> Any:
    """``torch.device`` for CoTrackerConfig.device; CUDA asked for but absent is a ValueError."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise ValueError(f"CoTrackerConfig.device = {device!r}: CUDA is not available ({why}, torch "
                             f"{torch.__version__}); use device 'cpu' or 'auto'")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"CoTrackerConfig.device = {device!r}: only {torch.cuda.device_count()} CUDA "
                             "device(s) here")
    return torch.device(device)


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
        self.device = resolve_device(config.device)
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
        conf = (self._conf * np.float32(self.cfg.confidence_decay ** self._since_result)).astype(np.float32)
        # A stale estimate whose confidence has decayed to the threshold is no
        # longer visible: the same rule as for a fresh result.
        visible = self._visible & (conf > self.cfg.visibility_threshold)
        return TrackResult(self._points.copy(), conf, visible)

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
