"""A recorder killed with SIGKILL mid-episode: the bag is recovered (issue 15).

The real recorder node runs as its own process; this process publishes an
episode to it over DDS, waits until the node has flushed part of it to the
MCAP file, and kills it with SIGKILL (no shutdown handler runs, no
metadata.yaml, no MCAP summary). The bag is refused with a message that
names the reindex command, and ``python -m atk_policy.bags reindex``
rebuilds it so that load_episodes reads the flushed frames back unchanged.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atk_fixtures.ros import wait_until
from atk_policy.bags import BagError, load_episodes

DISCOVERY_TIMEOUT_S = 30.0  # the recorder process to start and match our publishers on a loaded machine
SERVICE_TIMEOUT_S = 10.0    # start_episode to answer
FLUSH_TIMEOUT_S = 30.0      # the recorder to write the first chunks of the episode to its file
EXIT_TIMEOUT_S = 10.0       # a SIGKILLed process to be reaped
W, H, N = 320, 240, 40      # 230 kB frames: the writer flushes a 1 MiB chunk every ~4 frames
FLUSHED_BYTES = 4 * 2**20   # wait for at least 4 chunks (~16 frames) on disk before the kill


def _header(stamp_ns: int, frame_id: str = ""):
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


_KILLED_WRITER = """
import os, signal, sys
from atk_bringup.recording import EpisodeRecorder
from atk_policy.bags import make_typestore
store = make_typestore()
rec = EpisodeRecorder(sys.argv[1], [("/chatter", "std_msgs/msg/String")], storage=sys.argv[2])
print(rec.start(), flush=True)
for i in range(int(sys.argv[3])):
    msg = store.types["std_msgs/msg/String"](data=f"{i:06d}" + "x" * 2000)
    rec.write("/chatter", 1_000_000 + i, bytes(store.serialize_cdr(msg, "std_msgs/msg/String")))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_an_episode_recorder_killed_mid_episode_is_recovered_in_either_storage(tmp_path, storage):
    """ROS-free: the recorder's writer in its own process, SIGKILLed after 3 MiB of messages."""
    from atk_policy.bags import read_messages

    n = 1500  # 2 kB each: 3 MiB, so complete chunks (mcap) and commits (sqlite3) precede the kill
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), storage, str(n)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    bag = Path(done.stdout.strip())
    assert bag.parent == tmp_path and not (bag / "metadata.yaml").exists()
    fixed = subprocess.run([sys.executable, "-m", "atk_policy.bags", "reindex", str(bag)], capture_output=True,
                           text=True, timeout=120)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    got = [m.data for _, _, m in read_messages(bag)]
    # everything up to the last chunk or commit before the kill, in order, nothing else
    assert 1000 <= len(got) <= n
    assert got == [f"{i:06d}" + "x" * 2000 for i in range(len(got))]


def test_a_recorder_killed_mid_episode_leaves_a_bag_that_reindex_recovers(tmp_path):
    rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source env.sh")
    from atk_msgs.msg import GripperCommand
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_srvs.srv import Trigger

    from atk_perception.kinematics import GRIPPER_JOINT, JOINT_NAMES

    out = tmp_path / "bags"
    proc = subprocess.Popen([sys.executable, "-m", "atk_bringup.recorder_node", "--ros-args",
                             "-p", f"output_dir:={out}", "-p", "task:=sushi"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("recorder_kill_test", context=ctx)
    try:
        # Reliable publishers with room for the whole episode; the recorder's
        # sensor subscriptions are best effort with a queue of 100.
        q = QoSProfile(depth=N, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {"image": node.create_publisher(Image, "camera/color/image_raw", q),
                "info": node.create_publisher(CameraInfo, "camera/color/camera_info", q),
                "joints": node.create_publisher(JointState, "joint_states", q),
                "target": node.create_publisher(JointState, "joint_target", q),
                "grip": node.create_publisher(GripperCommand, "gripper_command", q)}
        for name, pub in pubs.items():
            wait_until(lambda: pub.get_subscription_count() >= 1, DISCOVERY_TIMEOUT_S,
                       f"the recorder to subscribe to {name}", proc=proc)
        start = node.create_client(Trigger, "/recorder/start_episode")
        assert start.wait_for_service(timeout_sec=DISCOVERY_TIMEOUT_S), "start_episode not offered"
        future = start.call_async(Trigger.Request())
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        executor.spin_until_future_complete(future, timeout_sec=SERVICE_TIMEOUT_S)
        executor.shutdown()
        assert future.done(), f"start_episode did not answer within {SERVICE_TIMEOUT_S} s"
        assert future.result().success, future.result().message
        bag = Path(future.result().message)

        rng = np.random.default_rng(0)
        t0 = 1_700_000_000 * 10**9
        images = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
        joints = np.c_[rng.normal(size=(N, 6)), np.linspace(0, 1, N)]
        targets = rng.normal(size=(N, 6))
        stamps = t0 + np.arange(N, dtype=np.int64) * 100_000_000
        for k in range(N):
            hdr = _header(int(stamps[k]), "camera_color_optical_frame")
            pubs["image"].publish(Image(header=hdr, height=H, width=W, encoding="rgb8", step=W * 3,
                                        data=images[k].tobytes()))
            pubs["info"].publish(CameraInfo(header=hdr, height=H, width=W,
                                            k=[300.0, 0, W / 2, 0, 300.0, H / 2, 0, 0, 1]))
            pubs["joints"].publish(JointState(header=_header(int(stamps[k])), name=[*JOINT_NAMES, GRIPPER_JOINT],
                                              position=joints[k].tolist()))
            pubs["target"].publish(JointState(header=_header(int(stamps[k])), name=list(JOINT_NAMES),
                                              position=targets[k].tolist()))
            pubs["grip"].publish(GripperCommand(header=_header(int(stamps[k])), position=0.0, speed=1.0,
                                                force=0.5))
        mcap = bag / f"{bag.name}.mcap"
        wait_until(lambda: mcap.is_file() and mcap.stat().st_size >= FLUSHED_BYTES, FLUSH_TIMEOUT_S,
                   f"{FLUSHED_BYTES} bytes of the episode in {mcap}", proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=EXIT_TIMEOUT_S)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=EXIT_TIMEOUT_S)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)

    # What the kill left: the MCAP file without summary, no metadata.yaml.
    assert not (bag / "metadata.yaml").exists()
    with pytest.raises(BagError, match=r"no metadata\.yaml.*python -m atk_policy\.bags reindex"):
        load_episodes(out)

    done = subprocess.run([sys.executable, "-m", "atk_policy.bags", "reindex", str(bag)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recovered" in done.stdout and (bag / f"{bag.name}.mcap.partial").is_file()

    (ep,), report = load_episodes(out)
    # at least the chunks that were on disk at the kill; each frame exactly what was published
    assert len(ep) >= 10, report.summary()
    index = {int(s) // 1_000_000: k for k, s in enumerate(stamps)}  # in ms: float seconds lose ~0.3 us
    ks = [index[int(round(s * 1e3))] for s in ep.stamps]
    assert ks == list(range(ks[0], ks[0] + len(ks)))  # consecutive frames: nothing lost in the middle
    for i, k in enumerate(ks):
        np.testing.assert_array_equal(ep.frames[i], images[k])
    np.testing.assert_allclose(ep.proprio, joints[ks], atol=1e-9)
    np.testing.assert_allclose(ep.actions[:, :6], targets[ks], atol=1e-9)
    assert ep.success is None and ep.meta["label"]["source"] == "recorder (recovered)"
