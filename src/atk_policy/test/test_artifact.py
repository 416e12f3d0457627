"""Model folder round trip and refusal of anything that does not match."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atk_perception.model_json import content_sha256
from atk_policy.artifact import ArtifactError, load_policy, load_template, read_model_json, save_policy
from atk_policy.config import ATKConfig, ModelConfig
from atk_policy.model import KeypointPolicy, Normalisation


@pytest.fixture
def saved(tmp_path: Path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    norm = Normalisation(rng.normal(size=7), rng.uniform(0.5, 2, 7), rng.normal(size=7), rng.uniform(0.5, 2, 7))
    pol = KeypointPolicy(3, (64, 48), ModelConfig(head="mlp_gaussian", hidden=(16, 16)), norm,
                         keypoint_ids=[5, 17, 2], keypoint_names=["handle", "lid", "kp2"],
                         canonical_xy=np.array([[10.5, 20.0], [30.0, 40.0], [63.0, 1.0]])).eval()
    template = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    save_policy(tmp_path / "m", pol, template, config=ATKConfig(), selection={"selected_ids": [5, 17, 2]})
    return tmp_path / "m", pol, template


def test_round_trip_gives_identical_actions(saved):
    d, pol, template = saved
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "policy.safetensors", "template.png"]
    back = load_policy(d)
    assert back.keypoint_ids == [5, 17, 2] and back.keypoint_names == ["handle", "lid", "kp2"]
    assert back.image_size == (64, 48)
    np.testing.assert_array_equal(back.canonical_xy, pol.canonical_xy)
    np.testing.assert_array_equal(load_template(d), template)
    rng = np.random.default_rng(1)
    for _ in range(5):
        kp, pr = rng.uniform(0, 48, (3, 2)), rng.normal(size=7)
        np.testing.assert_array_equal(back.select_action(kp, pr), pol.select_action(kp, pr))
    doc = read_model_json(d)
    assert doc["kind"] == "atk-keypoint-policy" and doc["image_size"] == [64, 48]
    assert doc["template_image"] == "template.png"
    assert doc["keypoints"]["canonical_xy"][0] == [10.5, 20.0]
    assert doc["action"]["names"][-1] == "gripper_command" and len(doc["observation"]["proprio"]["names"]) == 7


def test_the_tracker_reads_the_keypoints_the_policy_loads(saved):
    """One model.json reader (atk_perception.model_json) behind both: same ids, names, pixels and image."""
    from atk_perception.keypoint_template import load_model_template

    d, pol, template = saved
    tpl = load_model_template(d)
    back = load_policy(d)
    assert list(tpl.ids) == back.keypoint_ids and list(tpl.names) == back.keypoint_names
    np.testing.assert_array_equal(tpl.points, back.canonical_xy)
    np.testing.assert_array_equal(tpl.image, template)


def _edit(d: Path, fn, rehash: bool = False) -> None:
    doc = json.loads((d / "model.json").read_text())
    fn(doc)
    if rehash:
        doc["content_sha256"] = content_sha256(doc)
    (d / "model.json").write_text(json.dumps(doc))


def test_tampered_json_is_refused(saved):
    d, _, _ = saved
    _edit(d, lambda doc: doc["keypoints"]["canonical_xy"].__setitem__(0, [11.0, 20.0]))
    with pytest.raises(ArtifactError, match="edited after it was saved"):
        load_policy(d)


@pytest.mark.parametrize("edit, words", [
    (lambda doc: doc.__setitem__("format_version", 99), ["format_version 99 is not supported", "reads 1"]),
    (lambda doc: doc.__setitem__("kind", "something-else"), ["kind is 'something-else'"]),
    (lambda doc: doc["keypoints"]["ids"].pop(), ["keypoints.ids (2)", "canonical_xy (3)"]),
    (lambda doc: doc["keypoints"]["canonical_xy"].__setitem__(1, [640.0, 1.0]), ["canonical_xy[1]", "outside"]),
    (lambda doc: doc["model"].__setitem__("num_keypoints", 4), ["num_keypoints is 4"]),
    (lambda doc: doc["weights"]["tensors"].__setitem__("head.net.0.weight", [16, 99]), ["head.net.0.weight", "[16, 99]"]),
    (lambda doc: doc["normalisation"].__setitem__("action_std", [1.0] * 6), ["action_std"]),
])
def test_inconsistent_json_is_refused_even_when_rehashed(saved, edit, words):
    d, _, _ = saved
    _edit(d, edit, rehash=True)
    with pytest.raises(ArtifactError) as exc:
        load_policy(d)
    for w in words:
        assert w in str(exc.value)


def test_replaced_weights_or_template_are_refused(saved):
    d, _, _ = saved
    raw = bytearray((d / "policy.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (d / "policy.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="policy.safetensors: sha256"):
        load_policy(d)


def test_replaced_template_is_refused(saved):
    d, _, template = saved
    from atk_policy.artifact import write_png_rgb

    write_png_rgb(d / "template.png", 255 - template)
    with pytest.raises(ArtifactError, match="template.png: sha256"):
        load_policy(d)


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_policy(tmp_path / "nope")
    d, _, _ = saved
    (d / "policy.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights file policy.safetensors is missing"):
        load_policy(d)


def _rehashed_copy(saved, tmp_path: Path, edit) -> Path:
    import shutil

    src, _, _ = saved
    d = tmp_path / "edited"
    shutil.copytree(src, d)
    _edit(d, edit, rehash=True)
    return d


def test_edited_architecture_refused_before_allocating(saved, tmp_path):
    """Issue 15 defect 4: hidden widths of 8000 in model.json (hash recomputed)
    made the loader allocate the network (256 MB here) before comparing it with
    the weights. Now the shapes are compared first; peak memory stays flat."""
    import subprocess
    import sys

    d = _rehashed_copy(saved, tmp_path, lambda doc: doc["model"]["config"].__setitem__("hidden", [8000, 8000]))
    script = (
        "import json, resource, sys, torch\n"
        "from atk_policy.artifact import ArtifactError, load_policy\n"
        "torch.zeros(1000) + 1\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    load_policy(sys.argv[1]); err = ''\n"
        "except ArtifactError as exc:\n"
        "    err = str(exc)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'err': err, 'grown_kib': grown}))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "weights do not fit" in out["err"] and "[8000," in out["err"]
    assert out["grown_kib"] < 32 * 1024, f"peak memory grew by {out['grown_kib'] / 1024:.0f} MiB while refusing"


def test_unallocatable_architecture_is_an_artifact_error(saved, tmp_path):
    """Issue 15 defect 4: a width of 1e9 raised torch's raw "can't allocate"
    RuntimeError; every failure must be an ArtifactError naming the file."""
    d = _rehashed_copy(saved, tmp_path, lambda doc: doc["model"]["config"].__setitem__("hidden", [10**9]))
    with pytest.raises(ArtifactError, match="weights do not fit"):
        load_policy(d)


@pytest.mark.parametrize("key, value, words", [
    ("action_std", 1e30, "action_std[0] = 1e+30"),
    ("proprio_std", 1e-12, "proprio_std[0] = 1e-12"),
    ("action_mean", -5e3, "action_mean[0] = -5000"),
])
def test_absurd_normalisation_refused_even_when_rehashed(saved, tmp_path, key, value, words):
    """Issue 15 risk: an action std of 1e30 (hash recomputed) loaded, and would
    scale every network output into an absurd joint target."""
    d = _rehashed_copy(saved, tmp_path, lambda doc: doc["normalisation"][key].__setitem__(0, value))
    with pytest.raises(ArtifactError, match="plausible") as exc:
        read_model_json(d)  # refused before torch is touched
    assert words in str(exc.value)
    with pytest.raises(ArtifactError, match="plausible"):
        load_policy(d)


def test_safetensors_header_checked_against_model_json(saved, tmp_path):
    """model.json's tensor shapes must equal the weights file's header (read
    without loading any tensor), also when model.json was re-hashed."""
    from atk_policy.artifact import safetensors_shapes

    src, pol, _ = saved
    shapes = safetensors_shapes(src / "policy.safetensors")
    assert shapes == {k: list(v.shape) for k, v in pol.state_dict().items()}
    d = _rehashed_copy(saved, tmp_path, lambda doc: doc["weights"]["tensors"].__setitem__(
        "head.net.0.weight", [16, 99]))
    with pytest.raises(ArtifactError, match=r"file \[16, \d+\], model.json \[16, 99\]"):
        read_model_json(d)
    raw = (d / "policy.safetensors").read_bytes()
    (d / "policy.safetensors").write_bytes((10**12).to_bytes(8, "little") + raw[8:])
    with pytest.raises(ArtifactError, match="header length"):
        safetensors_shapes(d / "policy.safetensors")
