"""Ground truth for keypoints in the simulation (atk_bringup.sim.ground_truth).

The projection is checked against what the renderer draws (a small marker
at the point, 640x480), visibility against the rendered segmentation with
the gripper closed on the nigiri, and the recorded sidecar against the live
state it was recorded from.
"""
from __future__ import annotations

import mujoco
import numpy as np
import pytest

from atk_perception import kinematics as kin
from atk_bringup.sim import model as sim_model
from atk_bringup.sim.env import SimConfig, SimEnv
from atk_bringup.sim.ground_truth import (GroundTruthError, SceneGroundTruth, SimGroundTruthSource,
                                          Visibility, frame_digest)
from atk_bringup.sim.tasks import make_task

W, H = 640, 480
# A point on the salmon's top face, in the nigiri's body frame (rice centre).
MARKER_LOCAL = np.array([0.012, -0.006, 0.011 + 0.008])
MARKER_R = 0.006


def _marker_scene():
    """The sushi scene with a small sphere fixed at MARKER_LOCAL on the nigiri, in
    geom group 5: drawn only when asked, never hit by the ground truth's rays."""
    task = make_task("sushi")
    xml, assets = sim_model.build_mjcf(task.assets(), W, H, 0.002, None)
    marker = (f'<freejoint name="sushi"/><body name="gt_marker" pos="{MARKER_LOCAL[0]} {MARKER_LOCAL[1]} '
              f'{MARKER_LOCAL[2]}"><geom name="gt_marker" type="sphere" size="{MARKER_R}" group="5" '
              f'contype="0" conaffinity="0" mass="1e-6"/></body>')
    assert xml.count('<freejoint name="sushi"/>') == 1
    m = mujoco.MjModel.from_xml_string(xml.replace('<freejoint name="sushi"/>', marker), assets)
    d = mujoco.MjData(m)
    d.qpos[sim_model.index_model(m).arm_qpos] = kin.HOME_Q   # the arm out of the way
    adr = m.jnt_qposadr[m.joint("tamago").id]
    d.qpos[adr:adr + 3] = [0.0, 0.5, -0.5]                   # the other nigiri under the floor
    return m, d


def _marker_centroid(renderer, m, d, cam) -> np.ndarray:
    """Mean pixel (x, y) of the marker in a render that draws group 5 only (no occlusion)."""
    opt = mujoco.MjvOption()
    opt.geomgroup[:] = [0, 0, 0, 0, 0, 1]
    renderer.enable_segmentation_rendering()
    renderer.update_scene(d, camera=cam, scene_option=opt)
    seg = renderer.render()
    renderer.disable_segmentation_rendering()
    ys, xs = np.nonzero((seg[..., 0] == m.geom("gt_marker").id) & (seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM))
    assert len(xs) > 10, "marker not in view"
    return np.array([xs.mean(), ys.mean()])


def _random_nigiri_pose(m, d, rng) -> None:
    adr = m.jnt_qposadr[m.joint("sushi").id]
    d.qpos[adr:adr + 3] = [rng.uniform(0.38, 0.62), rng.uniform(-0.18, 0.18), rng.uniform(0.02, 0.2)]
    q = rng.normal(size=4)
    d.qpos[adr + 3:adr + 7] = q / np.linalg.norm(q)
    mujoco.mj_forward(m, d)


def test_projection_matches_a_rendered_marker_within_half_a_pixel():
    m, d = _marker_scene()
    cam = m.camera("cam").id
    gt = SceneGroundTruth(m, d, cam, W, H)
    sushi = m.body("sushi").id
    rng = np.random.default_rng(0)
    errors, anchor_errors = [], []
    with mujoco.Renderer(m, H, W) as r:
        for _ in range(12):
            # anchor the marker's pixel on the nigiri (top face up: the ray hits the salmon there)
            adr = m.jnt_qposadr[m.joint("sushi").id]
            d.qpos[adr:adr + 3] = [rng.uniform(0.4, 0.6), rng.uniform(-0.15, 0.15), 0.011]
            yaw = rng.uniform(-np.pi, np.pi)
            d.qpos[adr + 3:adr + 7] = [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            mujoco.mj_forward(m, d)
            c0 = _marker_centroid(r, m, d, cam)
            a = gt.anchor(c0[None])
            assert a.body[0] == sushi
            anchor_errors.append(np.linalg.norm(a.local[0] - MARKER_LOCAL))
            for _ in range(3):   # then anywhere, any orientation
                _random_nigiri_pose(m, d, rng)
                c = _marker_centroid(r, m, d, cam)
                view = gt.observe(a)
                errors.append(np.linalg.norm(view.points[0] - c))
    errors = np.asarray(errors)
    assert errors.max() < 0.5, f"projection vs rendered marker: max {errors.max():.3f} px"
    assert np.median(errors) < 0.15   # measured: max 0.26, median 0.09 px
    assert max(anchor_errors) < 0.001, f"anchor off by {max(anchor_errors) * 1000:.2f} mm"


@pytest.fixture(scope="module")
def env320():
    """The deployment resolution: cheaper than the marker test's 640x480."""
    env = SimEnv(SimConfig(width=320, height=240))
    yield env
    env.close()


def test_raycast_agrees_with_rendered_depth_and_segmentation(env320):
    env = env320
    obs = env.reset(task="sushi", seed=5, perturbations=("RP", "RO"))
    gt = SceneGroundTruth.from_env(env)
    seg, depth = env.render_segmentation(), obs.depth_mm / 1000.0
    rng = np.random.default_rng(1)
    w, h = env.config.width, env.config.height
    pix = np.rint(np.column_stack([rng.uniform(0, w - 1, 3000), rng.uniform(0, h - 1, 3000)]))
    ray, ren = gt.anchor(pix), gt.anchor_rendered(pix, depth, seg)
    assert np.mean(ray.body == ren.body) > 0.99
    err = np.linalg.norm(gt.world_points(ray) - gt.world_points(ren), axis=1)
    assert np.percentile(err, 99) < 0.002    # 1 mm depth quantisation
    # a few steps of the expert later, the two visibility tests agree too
    for _ in range(25):
        obs = env.step(env.expert_action())
    by_ray = gt.observe(ray)
    by_depth = gt.observe(ray, depth_m=obs.depth_mm / 1000.0, segmentation=env.render_segmentation())
    assert np.mean(by_ray.status == by_depth.status) > 0.99


def test_point_under_the_closed_gripper_is_hidden(env320):
    env = env320
    obs = env.reset(task="sushi", seed=2, perturbations=("RP",))
    gt = SceneGroundTruth.from_env(env)
    m = env.model
    sushi = m.body("sushi").id
    base = m.body("base").id
    robot = {b for b in range(m.nbody) if m.body_rootid[b] == base}   # arm links, tool0, fingers
    # grids on every face of the rice block and the salmon slice (body frame)
    local, top = [], []
    for centre, half in (((0, 0, 0), (0.028, 0.014, 0.011)), ((0, 0, 0.015), (0.033, 0.017, 0.004))):
        g = np.linspace(-0.9, 0.9, 5)
        for k in range(3):
            for sign in (-1.0, 1.0):
                a, b = np.meshgrid(g, g)
                face = np.zeros((a.size, 3))
                face[:, k] = sign
                face[:, [i for i in range(3) if i != k]] = np.column_stack([a.ravel(), b.ravel()])
                local.append(np.asarray(centre) + face * half)
                top += [k == 2 and sign > 0 and centre[2] > 0] * a.size
    local, top = np.concatenate(local), np.asarray(top)
    from atk_bringup.sim.ground_truth import Anchors

    anchors = Anchors(np.full(len(local), sushi), local)
    assert gt.observe(anchors).visible[top].all()   # the salmon's top face, before the grasp
    for _ in range(300):   # the expert until the gripper has closed on the nigiri
        obs = env.step(env.expert_action())
        # fingers on the nigiri (0.15 of their travel) and the nigiri lifted
        if obs.joint_positions[6] > 0.1 and env.state.data.xpos[sushi][2] > 0.03:
            break
    else:
        pytest.fail("the expert never lifted the nigiri")
    view = gt.observe(anchors)
    seg = env.render_segmentation()
    u = np.clip(np.rint(view.points[:, 0]).astype(int), 0, env.config.width - 1)
    v = np.clip(np.rint(view.points[:, 1]).astype(int), 0, env.config.height - 1)
    seen = seg[v, u]
    zr = obs.depth_mm[v, u] / 1000.0
    # rendered: the robot at the point's pixel, clearly (2 cm) in front of it; points
    # touching a finger pad are within the tolerance and may go either way
    under = np.isin(seen, list(robot)) & (zr > 0) & (zr < view.depth - 0.02)
    assert under.sum() >= 3, f"too few grid points behind the gripper in this view: {seen.tolist()}"
    assert (view.status[under] == Visibility.OCCLUDED).all()
    assert np.isin(view.occluder[under], list(robot)).all()
    on_top = top & (seen == sushi)
    assert on_top.any()
    assert view.visible[on_top].all()


def test_outside_and_behind_the_camera(env320):
    env = env320
    env.reset(task="sushi", seed=0, perturbations=("RP",))
    gt = SceneGroundTruth.from_env(env)
    r, t = gt.camera_pose()
    from atk_bringup.sim.ground_truth import Anchors

    world = np.stack([t - 0.5 * r[:, 2], t + 1.0 * r[:, 2] + 2.0 * r[:, 0]])  # behind; far right of the view
    view = gt.observe(Anchors(np.zeros(2, np.int64), world))   # body 0: the world frame
    assert view.status.tolist() == [Visibility.BEHIND, Visibility.OUTSIDE]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A short expert episode recorded as a bag (160x120, RP + RB), with the live
    simulator's truth for a few pixels of its first frame at every written frame."""
    from atk_bringup.experiment.demonstrations import record_expert_episode

    env = SimEnv(SimConfig(width=160, height=120, render_depth=False))
    gx, gy = np.meshgrid(np.linspace(5, 155, 8), np.linspace(30, 115, 6))
    pix = np.column_stack([gx.ravel(), gy.ravel()])
    live, frames = [], []

    class Spy:   # the env, noting the live truth of each frame the recorder writes
        anchors = None

        def __getattr__(self, k):
            return getattr(env, k)

        def expert_action(self):
            frames.append(env.last_observation.rgb.copy())
            g = SceneGroundTruth.from_env(env)
            if self.anchors is None:
                self.anchors = g.anchor(pix)
            live.append(g.observe(self.anchors))
            return env.expert_action()

    try:
        res = record_expert_episode(Spy(), tmp_path_factory.mktemp("bags") / "demo_000", task="sushi", seed=4,
                                    perturbations=("RP", "RB"), max_steps=45)
    finally:
        env.close()
    return res.path, frames, pix, live


def test_source_rebuilds_recorded_frames_and_refuses_unknown_ones(recorded, tmp_path):
    path, frames, pix, live = recorded
    src = SimGroundTruthSource()
    src.bind_episode({"bag": str(path)})
    anchors = src.anchor(frames[0], pix)
    for t in (0, 10, len(frames) - 1):
        pts, vis = src.locate(anchors, frames[t])
        np.testing.assert_allclose(pts, live[t].points, atol=1e-6)
        np.testing.assert_array_equal(vis, live[t].visible)
    other = frames[5].copy()
    other[0, 0, 0] ^= 1
    assert frame_digest(other) != frame_digest(frames[5])
    with pytest.raises(GroundTruthError, match="neither the simulator's current frame nor a recorded"):
        src.locate(anchors, other)
    with pytest.raises(GroundTruthError, match="no ground_truth.npz"):
        src.bind_episode({"bag": str(tmp_path)})


def test_propagation_with_the_oracle_gives_the_true_tracks(recorded):
    """Algorithm 1 from the bag with ``backend="oracle"`` (found by name through
    the entry point, as atk-train --backend oracle does) equals the live truth."""
    from atk_policy.bags import BagConversionConfig, load_episodes
    from atk_policy.propagation import propagate_dataset

    path, frames, pix, live = recorded
    episodes, _ = load_episodes([path], config=BagConversionConfig(skip_failed=False))  # cut short
    (ep,) = episodes
    assert len(ep) == len(frames)
    (te,) = propagate_dataset(episodes, ep.frames[0], pix.astype(np.float32), backend="oracle", progress=False)
    truth = np.stack([v.points for v in live])
    vis = np.stack([v.visible for v in live])
    inside = (truth[..., 0] >= 0) & (truth[..., 0] <= 159) & (truth[..., 1] >= 0) & (truth[..., 1] <= 119)
    np.testing.assert_allclose(te.tracks[inside], truth[inside], atol=1e-3)
    np.testing.assert_array_equal(te.visible, vis & inside)
    np.testing.assert_array_equal(te.confidence, (vis & inside).astype(np.float32))
    # the expert's arm comes down into the view: some points get covered, and move on
    assert (~vis[-1]).any() or (np.abs(truth[-1] - truth[0]) > 1).any()


@pytest.mark.parametrize("blank", [False, True], ids=["rendered", "blank-frames"])
def test_in_process_evaluation_with_the_oracle_follows_the_true_keypoints(blank):
    """KeypointAgent (tracker session + policy gate, as evaluated) with the oracle
    h_C on the live simulator: the template is the canonical frame (seed 0 under
    RP), the keypoints on the nigiri, reported where the nigiri truly is; also
    with ``env.blank_frames`` (what atk-demo's oracle rows use: no rendering),
    where every observed frame is black and the truth still comes through."""
    import torch

    from atk_bringup.experiment.demo import oracle_correspondence
    from atk_bringup.experiment.evaluation import KeypointAgent, run_episode
    from atk_perception.keypoint_template import KeypointTemplate
    from atk_policy.config import ModelConfig
    from atk_policy.model import KeypointPolicy, Normalisation

    env = SimEnv(SimConfig(width=320, height=240, render_depth=False))
    try:
        canon = env.reset(task="sushi", seed=0, perturbations=("RP",))
        seg = env.render_segmentation()
        ys, xs = np.nonzero(seg == env.model.body("sushi").id)
        pick = np.random.default_rng(0).choice(len(xs), 6, replace=False)
        points = np.column_stack([xs[pick], ys[pick]]).astype(np.float32)
        truth = SceneGroundTruth.from_env(env)
        anchors = truth.anchor(points)
        ids = tuple(range(len(points)))
        template = KeypointTemplate(canon.rgb, points, ids, tuple(f"kp{i}" for i in ids))
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        norm = Normalisation.from_data(rng.normal(size=(32, 7)).astype(np.float32),
                                       rng.normal(scale=0.01, size=(32, 7)).astype(np.float32))
        policy = KeypointPolicy(len(points), (320, 240), ModelConfig(hidden=(16,)), norm,
                                keypoint_ids=list(ids), canonical_xy=points)
        # timing "ideal": every frame tracked (the graph timing may drop frames on a loaded machine)
        agent = KeypointAgent(policy, oracle_correspondence(env, None, "sushi"), template, timing="ideal")
        env.blank_frames = blank
        reported, frames = [], []

        def on_step(t, obs, a):
            reported.append((agent.points.copy(), truth.observe(anchors)))
            frames.append(obs.rgb)

        run_episode(env, agent, "sushi", 3, ("RP", "RB"), max_steps=5, on_step=on_step)
    finally:
        env.close()
    assert len(reported) == 5 and agent.holds == 0, agent.last_reason
    for pts, view in reported:
        np.testing.assert_allclose(pts, view.points, atol=1e-3)
    assert np.abs(reported[0][0] - points).max() > 5   # another scene: the nigiri lies elsewhere
    assert all(f.shape == (240, 320, 3) for f in frames)
    assert all(not f.any() for f in frames) == blank  # black frames exactly when asked for
