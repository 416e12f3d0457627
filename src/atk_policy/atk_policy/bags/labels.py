"""``<bag>/episode.yaml``: the success label beside a bag."""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .common import LABEL_FILE, BagError


@dataclass
class EpisodeLabel:
    """``<bag>/episode.yaml``: the operator's (or simulator's) verdict on an episode.

    success: True/False, None when unknown; note: free text; task: e.g.
    "sushi"; seed: simulator seed or None; perturbations: e.g. ["RP", "RB"];
    source: "recorder", "ros2 bag record", "sim_expert", ...; recorded_at:
    ISO-8601 UTC; extra: any further keys found in the file (kept).
    """

    success: bool | None = None
    note: str = ""
    task: str = ""
    seed: int | None = None
    perturbations: list[str] = field(default_factory=list)
    source: str = ""
    recorded_at: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.success is not None and not isinstance(self.success, (bool, np.bool_)):
            raise ValueError(f"EpisodeLabel.success must be true, false or null, got {self.success!r}")
        if self.success is not None:
            self.success = bool(self.success)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise ValueError(f"EpisodeLabel.seed must be an integer or null, got {self.seed!r}")
        if not isinstance(self.perturbations, (list, tuple)) or not all(
                isinstance(x, str) for x in self.perturbations):
            raise ValueError(f"EpisodeLabel.perturbations must be a list of strings, got {self.perturbations!r}")
        self.perturbations = list(self.perturbations)
        for name in ("note", "task", "source", "recorded_at"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"EpisodeLabel.{name} must be a string, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        d = {"success": self.success, "note": self.note, "task": self.task,
             "seed": None if self.seed is None else int(self.seed),
             "perturbations": list(self.perturbations), "source": self.source,
             "recorded_at": self.recorded_at}
        d.update(self.extra)
        return d


def write_label(bag_dir: str | os.PathLike, label: EpisodeLabel) -> Path:
    """Write ``<bag_dir>/episode.yaml`` (atomically: temp file then rename)."""
    path = Path(bag_dir) / LABEL_FILE
    if not label.recorded_at:
        label.recorded_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("# Episode label (atk-ros): success true/false/null, note, task, seed.\n"
                   + yaml.safe_dump(label.to_dict(), sort_keys=False))
    tmp.replace(path)
    return path


def read_label(bag: str | os.PathLike) -> EpisodeLabel | None:
    """The label beside a bag, or None when the bag has none.

    For a bag folder: ``<bag>/episode.yaml``; for a single .mcap/.db3 file:
    ``<file>.episode.yaml``. A malformed file raises BagError naming it.
    """
    p = Path(bag)
    path = p / LABEL_FILE if p.is_dir() else p.with_name(p.name + "." + LABEL_FILE)
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BagError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise BagError(f"{path}: expected a mapping (success: ..., note: ...), got {type(data).__name__}")
    known = {k: data.pop(k) for k in ("success", "note", "task", "seed", "perturbations", "source",
                                      "recorded_at") if k in data}
    for k in ("note", "task", "source", "recorded_at"):
        if k in known and known[k] is None:
            known[k] = ""
        elif k in known and not isinstance(known[k], str):
            known[k] = str(known[k])
    if known.get("perturbations") is None:
        known.pop("perturbations", None)
    try:
        return EpisodeLabel(**known, extra=data)
    except ValueError as exc:
        raise BagError(f"{path}: {exc}") from exc
