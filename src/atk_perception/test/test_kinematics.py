"""UR5e kinematics: FK against hand-derived values, Jacobian, IK round trips, limits."""
from __future__ import annotations

import numpy as np
import pytest

from atk_perception import kinematics as k


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_zero_pose_matches_dh_table():
    # All joints at zero: arm stretched along -x, tool0 = (a2 + a3, -(d4 + d6), d1 - d5)
    # with tool0's z along base -y.
    t = k.fk(np.zeros(6))
    np.testing.assert_allclose(t[:3, 3], [-0.8172, -0.2329, 0.0628], atol=1e-9)
    np.testing.assert_allclose(t[:3, 2], [0.0, -1.0, 0.0], atol=1e-12)


def test_home_pose_points_down_with_gripper_tcp():
    # Upper arm up (z = d1 + |a2|), forearm horizontal (x = a3), wrist 2 offset
    # d5 further along -x, flange d6 below, gripper TCP 0.150 m further down.
    t = k.fk(k.HOME_Q, k.ROBOTIQ_2F85_TCP)
    expected = [-0.3922 - 0.0997, -0.1333, 0.1625 + 0.425 - 0.0996 - k.ROBOTIQ_2F85_TCP_Z]
    np.testing.assert_allclose(t[:3, 3], expected, atol=1e-9)
    np.testing.assert_allclose(t[:3, 2], [0.0, 0.0, -1.0], atol=1e-12)


def test_fk_all_frames_consistent():
    rng = np.random.default_rng(1)
    q = rng.uniform(-np.pi, np.pi, 6)
    frames = k.fk_all(q)
    assert frames.shape == (7, 4, 4)
    np.testing.assert_allclose(frames[0], np.eye(4))
    np.testing.assert_allclose(frames[-1], k.fk(q))
    # Joint 1 turns about base z: frame 1's origin is d1 above the base.
    np.testing.assert_allclose(frames[1][:3, 3], [0, 0, 0.1625], atol=1e-12)
    # Rotating joint 1 by +90 deg rotates every downstream frame about base z.
    q2 = q.copy()
    q2[0] += np.pi / 2
    rz = np.eye(4)
    rz[:3, :3] = _rot("z", np.pi / 2)
    np.testing.assert_allclose(k.fk_all(q2)[3:], rz @ frames[3:], atol=1e-12)
    for f in frames:  # proper rotations
        np.testing.assert_allclose(f[:3, :3] @ f[:3, :3].T, np.eye(3), atol=1e-12)


def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(2)
    for _ in range(5):
        q = rng.uniform(-np.pi, np.pi, 6)
        jac = k.jacobian(q, k.ROBOTIQ_2F85_TCP)
        t0 = k.fk(q, k.ROBOTIQ_2F85_TCP)
        eps = 1e-6
        for i in range(6):
            dq = np.zeros(6)
            dq[i] = eps
            t1 = k.fk(q + dq, k.ROBOTIQ_2F85_TCP)
            np.testing.assert_allclose((t1[:3, 3] - t0[:3, 3]) / eps, jac[:3, i], atol=1e-5)
            w = k.rotation_error(t1[:3, :3], t0[:3, :3]) / eps
            np.testing.assert_allclose(w, jac[3:, i], atol=1e-5)


@pytest.mark.parametrize("angle", [0.0, 1e-8, 0.5, np.pi - 1e-6, np.pi])
def test_rotation_error_recovers_axis_angle(angle):
    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    x = np.cross(axis, [1.0, 0, 0])
    x /= np.linalg.norm(x)
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx
    base = _rot("x", 0.4) @ _rot("z", -1.1)
    err = k.rotation_error(r @ base, base)
    assert abs(np.linalg.norm(err) - angle) < 1e-6
    if angle > 1e-3:
        # at exactly pi the sign of the axis is ambiguous
        assert abs(abs(np.dot(err / np.linalg.norm(err), axis)) - 1) < 1e-6


def test_ik_round_trip_random_reachable_poses():
    rng = np.random.default_rng(3)
    lim = k.CELL_JOINT_LIMITS
    tested = 0
    while tested < 40:
        q = rng.uniform(lim[:, 0], lim[:, 1])
        if np.linalg.svd(k.jacobian(q))[1].min() < 0.02:
            continue  # skip near-singular ground truth: slow, not wrong
        tested += 1
        target = k.fk(q, k.ROBOTIQ_2F85_TCP)
        seed = np.clip(q + rng.normal(0, 0.3, 6), lim[:, 0], lim[:, 1])
        res = k.ik_dls(target, seed, tcp_offset=k.ROBOTIQ_2F85_TCP, joint_limits=lim,
                       tol_pos=1e-5, tol_rot=1e-4)
        assert res.converged, (q, res)
        reached = k.fk(res.q, k.ROBOTIQ_2F85_TCP)
        assert np.linalg.norm(reached[:3, 3] - target[:3, 3]) < 1e-5
        assert np.linalg.norm(k.rotation_error(target[:3, :3], reached[:3, :3])) < 1e-4
        assert k.within_limits(res.q, lim)
        assert res.iters < 60


def test_ik_from_home_to_table_grasp():
    # A top-down grasp 0.15 m in front of home, 0.05 m above the table plane.
    target = k.fk(k.HOME_Q, k.ROBOTIQ_2F85_TCP)
    target[:3, 3] += [-0.15, 0.1, -0.25]
    res = k.ik_dls(target, k.HOME_Q, tcp_offset=k.ROBOTIQ_2F85_TCP,
                   joint_limits=k.CELL_JOINT_LIMITS)
    assert res.converged
    np.testing.assert_allclose(k.fk(res.q, k.ROBOTIQ_2F85_TCP), target, atol=1e-3)


def test_ik_unreachable_returns_best_effort_within_limits():
    target = np.eye(4)
    target[:3, 3] = [2.0, 0.0, 0.5]  # 2 m away: beyond the 0.85 m reach
    res = k.ik_dls(target, k.HOME_Q, joint_limits=k.CELL_JOINT_LIMITS, max_iters=100)
    assert not res.converged
    assert res.pos_err > 1.0
    assert k.within_limits(res.q, k.CELL_JOINT_LIMITS)


def test_ik_respects_tight_limits():
    # The target needs pan = 1.0 rad, but pan is limited to +-0.5: the solver
    # must stop at the limit instead of leaving it.
    q = k.HOME_Q.copy()
    q[0] = 1.0
    lim = k.CELL_JOINT_LIMITS.copy()
    lim[0] = [-0.5, 0.5]
    res = k.ik_dls(k.fk(q), k.HOME_Q, joint_limits=lim)
    assert not res.converged
    assert -0.5 <= res.q[0] <= 0.5
    assert res.q[0] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("bad", [np.full(6, np.nan), np.array([0, 0, 0, np.inf, 0, 0]), np.zeros(5)])
def test_bad_joint_input_is_refused(bad):
    with pytest.raises(k.KinematicsError):
        k.fk(bad)
    with pytest.raises(k.KinematicsError):
        k.ik_dls(np.eye(4), bad)


def test_bad_ik_options_are_refused():
    with pytest.raises(k.KinematicsError, match="damping"):
        k.ik_dls(k.fk(k.HOME_Q), k.HOME_Q, damping=-1.0)
    with pytest.raises(k.KinematicsError, match="joint_limits"):
        k.ik_dls(k.fk(k.HOME_Q), k.HOME_Q, joint_limits=np.zeros((6, 2)))
    with pytest.raises(k.KinematicsError, match="target"):
        k.ik_dls(np.full((4, 4), np.nan), k.HOME_Q)


def test_limits_tables():
    assert k.UR5E_JOINT_LIMITS.shape == (6, 2) and k.CELL_JOINT_LIMITS.shape == (6, 2)
    assert np.all(k.CELL_JOINT_LIMITS[:, 0] >= k.UR5E_JOINT_LIMITS[:, 0])
    assert np.all(k.CELL_JOINT_LIMITS[:, 1] <= k.UR5E_JOINT_LIMITS[:, 1])
    np.testing.assert_allclose(k.UR5E_VELOCITY_LIMITS, np.deg2rad(180.0))
    assert k.within_limits(k.HOME_Q, k.CELL_JOINT_LIMITS)
    assert not k.within_limits(np.array([0, 0.1, 0, 0, 0, 0]), k.CELL_JOINT_LIMITS)
    assert len(k.JOINT_NAMES) == 6
    with pytest.raises(ValueError):
        k.HOME_Q[0] = 1.0  # constants are read-only
