"""Loading keypoint templates from model artifact folders and plain points."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_perception.keypoint_template import (
    TemplateError, load_model_template, load_points_template, parse_points)

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"


def _artifact(tmp_path: Path, **changes) -> Path:
    img = cv2.imread(str(DATA / "rubberwhale1.png"))
    cv2.imwrite(str(tmp_path / "template.png"), img)
    doc = {"format_version": 1, "kind": "atk-keypoint-policy",
           "image_size": [img.shape[1], img.shape[0]],
           "keypoints": {"ids": [3, 17, 42], "names": ["a", "b", "c"],
                         "canonical_xy": [[10.5, 20.0], [300.0, 200.0], [583.0, 387.0]]},
           "template_image": "template.png", "weights": {"file": "policy.safetensors"}}
    for key, value in changes.items():
        if key in ("ids", "names", "canonical_xy"):
            doc["keypoints"][key] = value
        else:
            doc[key] = value
    (tmp_path / "model.json").write_text(json.dumps(doc))
    return tmp_path


def test_model_artifact_is_loaded(tmp_path: Path) -> None:
    folder = _artifact(tmp_path)
    doc = json.loads((folder / "model.json").read_text())
    doc["template_sha256"] = hashlib.sha256((folder / "template.png").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(doc))
    tpl = load_model_template(folder)
    assert tpl.size == (584, 388) and len(tpl) == 3
    assert tpl.ids == (3, 17, 42) and tpl.names == ("a", "b", "c")
    np.testing.assert_allclose(tpl.points[0], [10.5, 20.0])
    ref = cv2.cvtColor(cv2.imread(str(DATA / "rubberwhale1.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(tpl.image, ref)  # RGB, not BGR


@pytest.mark.parametrize("changes, match", [
    (dict(format_version=7), "format_version 7 is not supported"),
    (dict(image_size=[640, 480]), "image_size \\[640, 480\\] does not match"),
    (dict(canonical_xy=[[10, 20], [600, 10], [1, 1]]), "keypoint id 17\\) lies outside the 584x388"),
    (dict(ids=[1, 1, 2]), "keypoints.ids must be distinct"),
    (dict(names=["a"]), "names \\(1\\) and canonical_xy \\(3\\)"),
    (dict(template_image="../template.png"), "must be a file name inside the folder"),
    (dict(template_image="missing.png"), "missing.png does not exist"),
    (dict(template_sha256="0" * 64), "does not match model.json's template_sha256"),
])
def test_bad_artifacts_are_refused(tmp_path: Path, changes: dict, match: str) -> None:
    with pytest.raises(TemplateError, match=match):
        load_model_template(_artifact(tmp_path, **changes))


def test_missing_or_broken_model_json(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="has no model.json"):
        load_model_template(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(TemplateError, match="not valid JSON"):
        load_model_template(tmp_path)


def test_plain_points_template() -> None:
    tpl = load_points_template([5, 6, 100.5, 200.25], DATA / "basketball1.png")
    assert tpl.ids == (0, 1) and tpl.names == ("kp00", "kp01")
    np.testing.assert_allclose(tpl.points, [[5, 6], [100.5, 200.25]])
    with pytest.raises(TemplateError, match="got 3 values"):
        parse_points([1, 2, 3])
    with pytest.raises(TemplateError, match="cannot be read as an image"):
        load_points_template([1, 1], DATA / "README.md")


def test_resized_template_keeps_pixel_centres() -> None:
    tpl = load_points_template([0, 0, 583, 387, 291.5, 193.5], DATA / "rubberwhale1.png")
    half = tpl.resized(292, 194)
    assert half.size == (292, 194) and half.image.shape == (194, 292, 3)
    np.testing.assert_allclose(half.points, [[0, 0], [291, 193], [145.5, 96.5]], atol=0.26)


def test_support_points_load_and_scale_with_the_template(tmp_path):
    """model.json's support_xy (the model's other candidates) load after the
    keypoints, are dropped when outside the image, and scale with the template."""
    import json

    from atk_perception.keypoint_template import load_model_template

    img = np.zeros((40, 60, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "template.png"), img)
    (tmp_path / "model.json").write_text(json.dumps({
        "format_version": 1, "image_size": [60, 40], "template_image": "template.png",
        "keypoints": {"ids": [3, 5], "canonical_xy": [[10, 10], [20, 30]],
                      "support_xy": [[1, 2], [59, 39], [70, 5]]}}))
    tpl = load_model_template(tmp_path)
    np.testing.assert_array_equal(tpl.support, [[1, 2], [59, 39]])
    np.testing.assert_array_equal(tpl.transfer_points(), [[10, 10], [20, 30], [1, 2], [59, 39]])
    big = tpl.resized(120, 80)
    np.testing.assert_allclose(big.support, [[2.5, 4.5], [118.5, 78.5]])  # pixel centres: (x + .5) * 2 - .5
