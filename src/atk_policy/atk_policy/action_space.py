"""What a keypoint policy sees of the robot and what it outputs (numpy, ROS-free).

Bags record measured joints ``proprio`` (S, 7) = 6 joints (rad) + gripper
opening (0 open .. 1 closed) and commanded ``actions`` (S, 7) = 6 joint
targets + gripper command. An :class:`ActionSpace` turns them into

* ``features(proprio) -> (S, P)``: the robot-state input of the network;
* ``labels(proprio, actions) -> (S, A)``: the per-step training target;
* ``chunk(labels, episode) -> (S, K * A)``: the targets of the next K steps
  of the same episode (action chunking: the network predicts K steps at once
  and the policy executes them one per control step before predicting again;
  the last step of an episode repeats at the end);
* ``command(proprio, label) -> (7,)``: the joint targets + gripper command to
  publish for one predicted step, from the joints measured at that step.

Modes (``ModelConfig.action_mode``):

``delta``     features = proprio; label = joint targets - measured joints, gripper as is.
``absolute``  features = proprio; label = the raw targets.
``tcp``       features = tool-centre-point position (base frame, m), sin/cos
              of the tool yaw, gripper opening; label = the TCP displacement
              (m, base frame) and yaw change (rad) from the measured pose to
              the target pose, gripper command. ``command`` solves the
              inverse kinematics from the measured joints. The expert's
              motions are straight Cartesian lines, so this is the space in
              which they are simple: on simulated sushi demonstrations with
              true keypoints, joint-space MLPs reached 0/10 closed loop while
              the same MLP in this space reached 6/20 (30 demos), and 16/20
              with 4-step chunks and 60 demos (docs/training.md).

The gripper command of every mode is binarised (> 0.5 closes) when
``binary_gripper``: a regressed command that hovers near 0.1 would otherwise
close the gripper a little, and the network, which sees the gripper opening,
copies it into a full close (observed closed loop).
"""
from __future__ import annotations

import numpy as np

from atk_perception import kinematics as kin

ACTION_MODES = ("delta", "absolute", "tcp")

_JOINT_OFFSET = np.array([1.0] * 6 + [0.0], np.float32)

#: IK settings of ``tcp`` commands: those of the scripted experts (one 0.1 s step).
_IK = dict(tcp_offset=kin.ROBOTIQ_2F85_TCP, joint_limits=kin.CELL_JOINT_LIMITS, max_iters=60,
           tol_pos=2e-4, tol_rot=2e-3)


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class ActionSpace:
    """See the module doc. mode: one of ACTION_MODES; chunk: K >= 1 steps per prediction."""

    def __init__(self, mode: str = "delta", chunk: int = 1, binary_gripper: bool = True) -> None:
        if mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {mode!r}")
        if not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
            raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
        self.mode, self.chunk_steps, self.binary_gripper = mode, int(chunk), bool(binary_gripper)

    @property
    def proprio_dim(self) -> int:
        return 6 if self.mode == "tcp" else 7

    @property
    def action_dim(self) -> int:
        """A: values per step."""
        return 5 if self.mode == "tcp" else 7

    @property
    def output_dim(self) -> int:
        """K * A: what the network predicts."""
        return self.chunk_steps * self.action_dim

    # ------------------------------------------------------------------ training side
    @staticmethod
    def _tcp(q: np.ndarray) -> np.ndarray:
        return kin.fk(np.asarray(q[:6], np.float64), kin.ROBOTIQ_2F85_TCP)

    def features(self, proprio: np.ndarray) -> np.ndarray:
        """(S, 7) measured joints + gripper -> (S, P) float32."""
        p = np.asarray(proprio, np.float32).reshape(-1, 7)
        if self.mode != "tcp":
            return p.copy()
        out = np.empty((len(p), 6), np.float32)
        for i, q in enumerate(p):
            t = self._tcp(q)
            yaw = np.arctan2(t[1, 0], t[0, 0])
            out[i] = (*t[:3, 3], np.sin(yaw), np.cos(yaw), q[6])
        return out

    def labels(self, proprio: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(S, 7) measured, (S, 7) commanded -> (S, A) float32 targets."""
        p = np.asarray(proprio, np.float32).reshape(-1, 7)
        a = np.asarray(actions, np.float32).reshape(-1, 7)
        if self.mode == "delta":
            return (a - p * _JOINT_OFFSET).astype(np.float32)
        if self.mode == "absolute":
            return a.copy()
        out = np.empty((len(p), 5), np.float32)
        for i, (q, tgt) in enumerate(zip(p, a)):
            t0, t1 = self._tcp(q), self._tcp(tgt)
            dyaw = kin.rotation_error(t1[:3, :3], t0[:3, :3])[2]
            out[i] = (*(t1[:3, 3] - t0[:3, 3]), dyaw, tgt[6])
        return out

    def chunk(self, labels: np.ndarray, episode: np.ndarray) -> np.ndarray:
        """(S, A) per-step labels, (S,) episode index (samples of an episode
        contiguous and in time order) -> (S, K * A): the labels of steps t ..
        t+K-1 of the same episode, the episode's last one repeated past its end."""
        lab = np.asarray(labels, np.float32)
        if self.chunk_steps == 1:
            return lab.copy()
        ep = np.asarray(episode)
        s = len(lab)
        idx = np.arange(s)[:, None] + np.arange(self.chunk_steps)[None, :]
        # last sample index of each sample's episode
        ends = np.empty(s, np.int64)
        change = np.flatnonzero(np.diff(ep) != 0)
        starts = np.concatenate([[0], change + 1])
        stops = np.concatenate([change, [s - 1]])
        for a, b in zip(starts, stops):
            ends[a:b + 1] = b
        idx = np.minimum(idx, ends[:, None])
        return lab[idx].reshape(s, -1)

    def targets(self, proprio: np.ndarray, actions: np.ndarray, episode: np.ndarray) -> np.ndarray:
        """(S, 7), (S, 7), (S,) -> (S, K * A): what the network is trained to predict."""
        return self.chunk(self.labels(proprio, actions), episode)

    # ------------------------------------------------------------------ deployment side
    def command(self, proprio: np.ndarray, label: np.ndarray) -> np.ndarray:
        """One predicted step (A,) at measured proprio (7,) -> (7,) float32 joint targets + gripper."""
        q = np.asarray(proprio, np.float64).reshape(7)
        y = np.asarray(label, np.float64).reshape(self.action_dim)
        if self.mode == "delta":
            out = y + q * _JOINT_OFFSET
        elif self.mode == "absolute":
            out = y.copy()
        else:
            t0 = self._tcp(q)
            t = np.eye(4)
            t[:3, :3] = _rz(y[3]) @ t0[:3, :3]
            t[:3, 3] = t0[:3, 3] + y[:3]
            res = kin.ik_dls(t, q[:6], **_IK)
            out = np.concatenate([res.q, [y[4]]])
        if self.binary_gripper:
            out[6] = 1.0 if out[6] > 0.5 else 0.0
        return out.astype(np.float32)
