"""Fixtures shared by the camera tests: damaged recordings made on the fly."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


def make_mjpeg_video(path: Path, n: int = 60, size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    """An MJPEG AVI of n distinct frames (index drawn in); returns them as RGB."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, size)
    assert writer.isOpened(), "OpenCV cannot write MJPEG AVI here"
    frames = []
    for i in range(n):
        bgr = np.zeros((size[1], size[0], 3), np.uint8)
        bgr[:, :, 1] = (np.arange(size[0]) * 2 + i * 7) % 256
        cv2.putText(bgr, str(i), (10, size[1] - 20), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        writer.write(bgr)
        frames.append(bgr)
    writer.release()
    return frames


def damage_frames(path: Path, which: list[int]) -> None:
    """Destroy the JPEG start of the listed frames' AVI chunks ('00dc'), so
    the decoder cannot decode them while the container stays intact."""
    data = bytearray(path.read_bytes())
    chunks, at = [], data.index(b"movi")
    while (at := data.find(b"00dc", at + 4)) != -1:
        size = int.from_bytes(data[at + 4:at + 8], "little")
        if size > 0 and data[at + 8:at + 10] == b"\xff\xd8":  # a JPEG chunk, not the index
            chunks.append((at + 8, size))
    for k in which:  # zeroing only the JPEG header left a decodable frame
        start, size = chunks[k]
        data[start:start + size] = bytes(size)
    path.write_bytes(bytes(data))


@pytest.fixture
def bad_recordings(tmp_path: Path) -> dict[str, Path]:
    """Recordings with the faults of issue 15, all made here (no files in git).

    intact: 60-frame MJPEG AVI (160x120, 15 fps, 4 s declared); damaged: the
    same with frames 20 and 41 undecodable; truncated: its first half of
    bytes; mixed: a folder of 64x48 and 80x60 PNGs interleaved (000, 002, 004
    are 64x48 with values 0, 40, 80) and one unreadable .png.
    """
    intact = tmp_path / "intact.avi"
    make_mjpeg_video(intact)
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(intact.read_bytes())
    damage_frames(damaged, [20, 41])
    truncated = tmp_path / "truncated.avi"
    data = intact.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(6):
        w, h = (64, 48) if i % 2 == 0 else (80, 60)
        cv2.imwrite(str(mixed / f"{i:03d}.png"), np.full((h, w, 3), i * 20, np.uint8))
    (mixed / "007.png").write_bytes(b"not a png")
    return {"intact": intact, "damaged": damaged, "truncated": truncated, "mixed": mixed}
