"""Choose an h_C backend by name (ROS-free): ``make_correspondence("cpu")``."""
from __future__ import annotations

import dataclasses
from typing import Any

from atk_perception.correspondence import Correspondence

#: "oracle" is PRIVILEGED and SIMULATION-ONLY: true keypoints from the
#: simulator (atk_perception.oracle_backend), never a deployable h_C.
BACKENDS = ("cpu", "cotracker", "oracle")


def _build_config(cls: type, overrides: dict[str, Any], backend: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"backend {backend!r}: unknown option(s) {unknown}; "
                         f"known: {sorted(known)}")
    return cls(**overrides)


def make_correspondence(backend: str, **overrides: Any) -> Correspondence:
    """Build the h_C backend ``backend`` (one of BACKENDS) with config ``overrides``.

    ``overrides`` are fields of the backend's config dataclass
    (:class:`~atk_perception.cpu_tracker.CpuTrackerConfig` or
    :class:`~atk_perception.cotracker_backend.CoTrackerConfig`); an unknown
    field or an unknown backend raises ValueError listing the choices.
    "oracle" (privileged, simulation-only) takes one option, ``ground_truth``:
    a :class:`~atk_perception.oracle_backend.GroundTruthSource`; without it
    the simulator's source is found through its entry point.
    """
    if backend == "cpu":
        from atk_perception.cpu_tracker import CpuTracker, CpuTrackerConfig
        return CpuTracker(_build_config(CpuTrackerConfig, overrides, backend))
    if backend == "cotracker":
        from atk_perception.cotracker_backend import CoTrackerBackend, CoTrackerConfig
        return CoTrackerBackend(_build_config(CoTrackerConfig, overrides, backend))
    if backend == "oracle":
        from atk_perception.oracle_backend import OracleCorrespondence, load_ground_truth_source
        unknown = sorted(set(overrides) - {"ground_truth"})
        if unknown:
            raise ValueError(f"backend 'oracle': unknown option(s) {unknown}; known: ['ground_truth']")
        source = overrides.get("ground_truth") or load_ground_truth_source()
        return OracleCorrespondence(source)
    raise ValueError(f"unknown correspondence backend {backend!r}; choose one of {BACKENDS}")
