"""The trained-policy artifact: a folder that the policy node loads.

ROS-free. Layout of ``model_dir``::

    policy.safetensors   weights of the keypoint policy (no pickles)
    model.json           everything else (see below)
    template.png         the canonical image I_can, RGB (written as PNG)

``model.json`` holds at least::

    {"format_version": 1,
     "kind": "atk-keypoint-policy",
     "image_size": [W, H],
     "keypoints": {"ids": [...], "names": [...], "canonical_xy": [[x, y], ...]},
     "template_image": "template.png",
     "weights": {"file": "policy.safetensors", "sha256": "..."},
     "observation": {...}, "action": {...},      # layout, see docs/interfaces.md
     "normalisation": {...}, "config": {...}, "selection": {...}}

Loading validates every field and refuses mismatches (another format
version, edited JSON, weights that do not match their sha256, shapes that
disagree) with an :class:`ArtifactError` that says what differs.

API (stable; the policy node and the tracker node use it)::

    save_policy(model_dir, policy, template_image, *, selection=None,
                config=None, extra=None) -> Path
    load_policy(model_dir) -> KeypointPolicy
        .select_action(keypoints (N, 2) float pixels, proprio (7,)) -> (7,)
        .reset()
        .keypoint_ids, .keypoint_names, .canonical_xy (N, 2), .image_size (W, H)
"""
from __future__ import annotations

FORMAT_VERSION = 1
KIND = "atk-keypoint-policy"


class ArtifactError(ValueError):
    """A model folder that cannot be loaded; the message says what differs."""


def save_policy(model_dir, policy, template_image, *, selection=None, config=None, extra=None):
    """Write ``policy`` (a KeypointPolicy) and ``template_image`` (H, W, 3) uint8 RGB."""
    raise NotImplementedError("artifact.save_policy: implementation lands shortly (issue 3)")


def load_policy(model_dir):
    """Load and validate a model folder; returns a KeypointPolicy."""
    raise NotImplementedError("artifact.load_policy: implementation lands shortly (issue 3)")
