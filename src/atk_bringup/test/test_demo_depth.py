"""atk-demo's Depth and Pointcloud methods (issue 13): asked for by --methods (and 'all', not the
default), demonstrations that record depth (and old ones recorded again with it), evaluation that
renders depth for those methods only, and models of an earlier run completed with the missing baselines."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="mujoco not installed: source env.sh")

from atk_bringup.experiment import demo, demonstrations  # noqa: E402
from atk_bringup.experiment.evaluation import EpisodeResult, ImageAgent  # noqa: E402
from atk_bringup.sim import model as sim_model  # noqa: E402
from atk_bringup.sim.env import SimConfig, SimEnv  # noqa: E402
from atk_policy.bags import BagConversionConfig, inspect_bag, load_episodes  # noqa: E402
from atk_policy.depth_geometry import Intrinsics  # noqa: E402
from atk_policy.model import Normalisation  # noqa: E402

W, H = 64, 48
DEPTH_TOPIC = "/camera/depth/image_raw"


def _configs(argv: list[str], monkeypatch) -> list:
    ran = []
    monkeypatch.setattr(demo, "run", lambda cfg: ran.append(cfg) or 0)
    assert demo.main(argv) == 0
    return ran


def test_methods_accept_depth_and_pointcloud_and_all_includes_them(tmp_path, monkeypatch, capsys):
    (every,) = _configs(["--out", str(tmp_path), "--methods", "all"], monkeypatch)
    assert {"Depth", "Pointcloud"} <= set(every.methods) and every.methods == demo.METHODS
    assert every.needs_depth
    (default,) = _configs(["--out", str(tmp_path)], monkeypatch)
    assert not {"Depth", "Pointcloud"} & set(default.methods) and not default.needs_depth
    (some,) = _configs(["--out", str(tmp_path), "--methods", "ATK,Pointcloud"], monkeypatch)
    assert some.methods == ("ATK", "Pointcloud") and some.needs_depth
    (quick,) = _configs(["--out", str(tmp_path), "--quick", "--methods", "all"], monkeypatch)
    assert (quick.rgb_steps, quick.depth_steps, quick.pointcloud_steps) == (30, 30, 30)
    assert demo.main(["--out", str(tmp_path), "--methods", "ATK,depth"]) == 2
    assert "'Depth', 'Pointcloud')" in capsys.readouterr().err
    assert demo.BASELINE_OF["Depth"] == "depth" and demo.BASELINE_OF["Pointcloud"] == "pointcloud"
    # table rows as RGB's: no h_C label
    assert [demo.row_name(m, h) for m in ("RGB", "Depth", "Pointcloud") for h in ("cpu", "oracle")] == [
        "RGB", "RGB", "Depth", "Depth", "Pointcloud", "Pointcloud"]
    assert demo.row_name("ATK", "cpu") == "ATK (CPU h_C)"


def test_help_names_the_depth_methods(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Depth (the RGB CNN on the depth image)" in out and "Pointcloud (a PointNet" in out
    assert "record depth" in out


def test_demonstrations_record_depth_when_asked(tmp_path):
    env = SimEnv(SimConfig(width=W, height=H, render_depth=True))
    try:
        res = demonstrations.record_expert_episode(env, tmp_path / "d", task="sushi", seed=3, max_steps=4,
                                                   with_depth=True)
        first = env.reset(task="sushi", seed=3)
    finally:
        env.close()
    counts = {t.name: t.count for t in inspect_bag(res.path).topics}
    assert counts[DEPTH_TOPIC] == 4 == counts["/camera/color/image_raw"]
    (ep,), _ = load_episodes(res.path, config=BagConversionConfig(min_frames=2, skip_failed=False))
    assert ep.depth is not None and ep.depth[0].dtype == np.uint16
    np.testing.assert_array_equal(ep.depth[0], first.depth_mm)   # the same seeded scene, frame 0
    assert 400 < np.median(ep.depth[0]) < 1600                     # the cell at the camera's distance, in mm


def test_demos_without_depth_are_recorded_again_when_a_depth_method_is_asked(tmp_path, monkeypatch, capsys):
    real = {n: getattr(demonstrations, n) for n in ("record_expert_episode", "record_relabelled_episode")}
    for name, fn in real.items():   # three steps per demonstration: enough to see the topics
        monkeypatch.setattr(demonstrations, name, functools.partial(fn, max_steps=3))
    plain = demo.DemoConfig(out=tmp_path, demos=4, width=W, height=H)
    env = demo.make_env(plain)
    try:
        assert not env.render_depth
        bags = demo.collect_demos(plain, env)
    finally:
        env.close()
    assert all(demo.lacks_depth(b) for b in bags)
    capsys.readouterr()
    deep = demo.DemoConfig(out=tmp_path, demos=4, width=W, height=H, methods=("ATK", "RGB", "Depth"))
    env = demo.make_env(deep)
    try:
        assert env.render_depth
        bags = demo.collect_demos(deep, env)
        out = capsys.readouterr().out
        assert "4 demonstrations in" in out and "were recorded without depth, which Depth need" in out
        assert not any(demo.lacks_depth(b) for b in bags)
        for b in bags:
            assert {t.name: t.count for t in inspect_bag(b).topics}[DEPTH_TOPIC] == 3
        demo.collect_demos(deep, env)    # now they have it: kept, nothing said
        assert "without depth" not in capsys.readouterr().out
    finally:
        env.close()


def _norm() -> Normalisation:
    rng = np.random.default_rng(0)
    p = np.c_[rng.normal(size=(40, 6)), rng.uniform(0, 1, 40)].astype(np.float32)
    a = (p + 0.01 * rng.normal(size=p.shape)).clip(-5, 5).astype(np.float32)
    a[:, 6] = p[:, 6] > 0.5
    return Normalisation.from_data(p, a)


@pytest.fixture(scope="module")
def image_models(tmp_path_factory) -> dict[str, Path]:
    """Untrained RGB, Depth and Pointcloud models for the simulator's 64x48 camera."""
    from atk_policy.depth_baseline import DepthConfig, DepthPolicy, save_depth_policy
    from atk_policy.pointcloud_baseline import PointcloudConfig, PointcloudPolicy, save_pointcloud_policy
    from atk_policy.rgb_baseline import RGBConfig, RGBPolicy, save_rgb_policy

    d = tmp_path_factory.mktemp("image_models")
    template = np.zeros((H, W, 3), np.uint8)
    k = sim_model.camera_intrinsics(W, H)
    save_rgb_policy(d / "rgb", RGBPolicy(RGBConfig(), _norm(), (W, H)), template)
    save_depth_policy(d / "depth", DepthPolicy(DepthConfig(), _norm(), (W, H)), template)
    save_pointcloud_policy(d / "pointcloud", PointcloudPolicy(
        PointcloudConfig(), _norm(), (W, H), Intrinsics(tuple(k.reshape(-1)), W, H)), template)
    return {"RGB": d / "rgb", "Depth": d / "depth", "Pointcloud": d / "pointcloud"}


def test_evaluation_renders_depth_for_the_depth_methods_only(image_models, monkeypatch):
    """The evaluation worker's simulator renders depth for Depth and Pointcloud episodes only, and never
    blanks their frames (the oracle h_C's shortcut for keypoint methods)."""
    seen = []
    env = SimpleNamespace(config=SimpleNamespace(control_hz=10.0, width=W, height=H), blank_frames=True,
                          render_depth=True)

    def episode(env_, agent, task, seed, perturbations, stall_steps=None):
        seen.append((type(agent.policy).__name__, getattr(agent, "observation", None), env_.blank_frames,
                     env_.render_depth))
        return EpisodeResult(task, seed, tuple(perturbations), True, 5)

    monkeypatch.setattr(demo, "run_episode", episode)
    monkeypatch.setitem(demo._WORKER, "env", env)
    monkeypatch.setitem(demo._WORKER, "agents", {})
    for method in ("Depth", "RGB", "Pointcloud"):
        for h_c in ("oracle", "cpu"):
            r = demo._worker_episode((method, h_c, 0, "RP", 10_000, str(image_models[method]), "sushi", 5.0,
                                      "/nonexistent", False))
            assert r["success"] and r["method"] == method
    assert seen == [("DepthPolicy", "depth_mm", False, True)] * 2 + [("RGBPolicy", "rgb", False, False)] * 2 + [
        ("PointcloudPolicy", "depth_mm", False, True)] * 2


def test_depth_agents_act_on_the_simulators_depth(image_models):
    env = SimEnv(SimConfig(width=W, height=H, render_depth=False))
    try:
        for method in ("Depth", "Pointcloud"):
            agent = demo.make_agent(method, image_models[method])
            env.render_depth = False
            obs = env.reset(task="sushi", seed=1)
            agent.reset(obs)
            with pytest.raises(ValueError, match="acts on depth_mm, but the observation has none"):
                agent.act(obs)
            env.render_depth = True
            obs = env.reset(task="sushi", seed=1)
            agent.reset(obs)
            a = agent.act(obs)
            assert a.shape == (7,) and np.all(np.isfinite(a))
            assert isinstance(agent, ImageAgent) and agent.observation == "depth_mm"
    finally:
        env.close()


def _finished_model(out: Path, baselines: list[str]) -> None:
    out.mkdir(parents=True)
    (out / "model.json").write_text("{}")
    for b in baselines:
        (out / "baselines" / b).mkdir(parents=True)
        (out / "baselines" / b / "model.json").write_text("{}")
    (out / "atk_demo_train.json").write_text(json.dumps({"seed": 0, "baselines": baselines}))


def test_a_model_of_an_earlier_run_gets_the_missing_depth_baselines_only(tmp_path, monkeypatch):
    import atk_policy.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: calls.append(("train", a[2].names))
                        or SimpleNamespace(summary="trained"))

    def add(source, config, baselines, out, progress=True):
        calls.append(("train_baselines", baselines.names))
        for b in baselines.names:
            (out / "baselines" / b).mkdir(parents=True)
            (out / "baselines" / b / "model.json").write_text("{}")
        return {b: 0.5 for b in baselines.names}

    monkeypatch.setattr(pipeline, "train_baselines", add)
    out = tmp_path / "models" / "seed0"
    _finished_model(out, ["fullset", "random", "rgb"])
    cfg = demo.DemoConfig(out=tmp_path, methods=("ATK", "FullSet", "RandomSelect", "RGB", "Depth", "Pointcloud"))
    assert demo.train_seed(cfg, 0) == out
    assert calls == [("train_baselines", ("depth", "pointcloud"))]
    assert json.loads((out / "atk_demo_train.json").read_text())["baselines"] == [
        "depth", "fullset", "pointcloud", "random", "rgb"]
    calls.clear()
    assert demo.train_seed(cfg, 0) == out and calls == []          # complete now: nothing to do
    # a missing keypoint baseline needs the ATK run: the seed is trained again
    cfg = demo.DemoConfig(out=tmp_path, methods=demo.METHODS)
    demo.train_seed(cfg, 0)
    assert calls == [("train", ("fullset", "random", "manual", "rgb", "depth", "pointcloud"))]
