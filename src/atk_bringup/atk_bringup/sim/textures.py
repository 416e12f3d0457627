"""Procedural textures for the simulated scenes, generated with numpy.

Real objects carry texture (rice grains, fish fat lines, clock markings, wood
grain), and keypoint trackers need it: a uniformly coloured object has no
features to follow. Every texture here is a deterministic function of its
name (a fixed seed per texture), so the compiled model is the same on every
machine and every run.

All functions return `(H, W, 3) uint8` RGB images; `png_bytes` encodes one for
MuJoCo's in-memory asset loader.
"""
from __future__ import annotations

import zlib

import cv2
import numpy as np


def _rng(name: str) -> np.random.Generator:
    # crc32 rather than hash(): Python's str hash is salted per process.
    return np.random.default_rng(zlib.crc32(name.encode()))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Band-limited noise in [0, 1]: (h, w) float32."""
    small = rng.random((max(2, h // scale), max(2, w // scale))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def png_bytes(img: np.ndarray) -> bytes:
    """Encode an `(H, W, 3) uint8` RGB image as PNG bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding of a procedural texture failed")
    return buf.tobytes()


def rice(size: int = 128) -> np.ndarray:
    """Off-white rice: many small elongated bright grains with dark gaps."""
    rng = _rng("rice")
    img = np.full((size, size, 3), (205, 200, 185), np.float32)
    for _ in range(size * size // 40):
        c = rng.integers(0, size, 2)
        ang = rng.uniform(0, 180)
        tone = rng.uniform(225, 255)
        cv2.ellipse(img, (int(c[0]), int(c[1])), (4, 2), ang, 0, 360,
                    (tone, tone, tone - 12), -1, lineType=cv2.LINE_AA)
    img -= 25 * _smooth_noise(rng, size, size, 8)[..., None]
    return img.clip(0, 255).astype(np.uint8)


def salmon(size: int = 128) -> np.ndarray:
    """Salmon flesh: deep orange at the back, paler belly crossed by white fat bands.

    Like a real slice, the fat bands run diagonally and widen towards the
    belly while the flesh pales: the pattern has no 180-degree symmetry and
    is coarse enough to survive a 20 px rendering. A finer, symmetric
    pattern (the earlier uniform thin stripes) makes the nigiri, a
    symmetric box, look the same turned by half a turn, and keypoint
    transfer then cannot tell its ends apart.
    """
    rng = _rng("salmon")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    along = (xx + 0.6 * yy) / 1.6  # 0 at the back corner, 1 at the belly corner
    warp = 0.04 * np.sin(5.0 * yy + 1.3) + 0.04 * _smooth_noise(rng, size, size, 16)
    phase = np.sin(((xx - 0.8 * yy) + warp) * np.pi * 4.0)
    # Bands widen and brighten towards the belly; the back is lean.
    stripes = np.clip((phase - 0.75 + 0.9 * along) / 0.3, 0.0, 1.0) * np.clip(1.6 * along - 0.1, 0, 1)
    back = np.array((200, 55, 30), np.float32)
    belly = np.array((250, 150, 105), np.float32)
    flesh = back + (belly - back) * along[..., None]
    fat = np.array((252, 228, 210), np.float32)
    img = flesh * (1 - stripes[..., None]) + fat * stripes[..., None]
    img *= (0.9 + 0.1 * _smooth_noise(rng, size, size, 12))[..., None]
    return img.clip(0, 255).astype(np.uint8)


def tamago(size: int = 64) -> np.ndarray:
    """Egg omelette: yellow layers, browned towards one end (a second sushi as clutter).

    The browning (as on a real tamago's grilled face) breaks the layers'
    half-turn symmetry, so a keypoint on the tamago has one true place.
    """
    rng = _rng("tamago")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    layers = 0.5 + 0.5 * np.sin(yy * np.pi * 9)
    img = np.stack([245 - 10 * layers, 205 - 25 * layers, 70 + 20 * layers], -1)
    brown = np.clip((xx + 0.5 * yy) / 1.5 * 2.0 - 0.8, 0.0, 1.0)
    brown = brown * (0.75 + 0.5 * _smooth_noise(rng, size, size, 8))
    img = img * (1 - 0.7 * brown[..., None]) + np.array((165, 80, 15), np.float32) * 0.7 * brown[..., None]
    img *= (0.9 + 0.1 * _smooth_noise(rng, size, size, 8))[..., None]
    return img.clip(0, 255).astype(np.uint8)


def plate(size: int = 256) -> np.ndarray:
    """Ceramic plate seen from above: white with a blue rim and a pattern."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size * 2 - 1
    r = np.hypot(xx, yy)
    ang = np.arctan2(yy, xx)
    img = np.full((size, size, 3), 240, np.float32)
    rim = (r > 0.78) & (r < 0.92)
    img[rim] = (40, 70, 160)
    # Hand-painted: the dashes are unevenly spaced and the dots scattered.
    # A regular (6- or 12-fold) pattern gives SIFT and correlation equally
    # good matches every 60 degrees once the plate turns.
    waves = (r > 0.62) & (r < 0.72) & (np.sin(ang * 12 + 1.2 * np.sin(ang * 2 + 0.5)) > 0.2)
    img[waves] = (70, 110, 190)
    rng = _rng("plate")
    for _ in range(7):
        rr, aa = rng.uniform(0.2, 0.5), rng.uniform(0, 2 * np.pi)
        cv2.circle(img, (int(size / 2 * (1 + rr * np.cos(aa))), int(size / 2 * (1 + rr * np.sin(aa)))),
                   max(2, size // 45), (200, 60, 60), -1, cv2.LINE_AA)
    # A painted branch in one part of the well, as on real ceramics: without
    # it the pattern repeats every 60 degrees and a point on the plate has
    # six equally good places once the plate is turned.
    c = size / 2
    pts = [(c - 0.05 * size, c + 0.12 * size), (c + 0.1 * size, c + 0.02 * size),
           (c + 0.22 * size, c - 0.1 * size)]
    for p0, p1 in zip(pts[:-1], pts[1:]):
        cv2.line(img, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), (40, 60, 130),
                 max(2, size // 40), cv2.LINE_AA)
    for k, (lx, ly) in enumerate(pts):
        cv2.ellipse(img, (int(lx), int(ly - 0.04 * size)), (max(3, size // 20), max(2, size // 40)),
                    30 + 40 * k, 0, 360, (30, 120, 60), -1, cv2.LINE_AA)
    cv2.circle(img, (int(c + 0.22 * size), int(c - 0.1 * size)), max(3, size // 22), (210, 50, 70), -1,
               cv2.LINE_AA)
    return img.astype(np.uint8)


def clock_face(size: int = 256) -> np.ndarray:
    """Clock dial: cream face, 12 hour ticks (long at 12/3/6/9), numerals."""
    img = np.full((size, size, 3), (245, 238, 215), np.uint8)
    c = size / 2
    for k in range(60):
        ang = 2 * np.pi * k / 60
        long = k % 15 == 0
        hour = k % 5 == 0
        r0 = c * (0.70 if long else 0.78 if hour else 0.86)
        p0 = (int(c + r0 * np.sin(ang)), int(c - r0 * np.cos(ang)))
        p1 = (int(c + c * 0.93 * np.sin(ang)), int(c - c * 0.93 * np.cos(ang)))
        cv2.line(img, p0, p1, (20, 20, 20), 5 if long else 3 if hour else 1, cv2.LINE_AA)
    for num, k in (("12", 0), ("3", 15), ("6", 30), ("9", 45)):
        ang = 2 * np.pi * k / 60
        p = (int(c + c * 0.52 * np.sin(ang)) - 12, int(c - c * 0.52 * np.cos(ang)) + 9)
        cv2.putText(img, num, p, cv2.FONT_HERSHEY_SIMPLEX, 0.8, (150, 20, 20), 2, cv2.LINE_AA)
    cv2.circle(img, (int(c), int(c)), int(c * 0.97), (60, 40, 30), 4, cv2.LINE_AA)
    return img


def brushed_metal(size: int = 128, name: str = "metal") -> np.ndarray:
    """Brushed steel: grey with horizontal streaks (the pot)."""
    rng = _rng(name)
    streak = cv2.resize(rng.random((size, 4)).astype(np.float32), (size, size))
    img = 140 + 60 * streak[..., None] + 15 * rng.random((size, size, 1))
    return np.repeat(img, 3, -1).clip(0, 255).astype(np.uint8)


def wood(size: int = 256, name: str = "wood", tone: tuple[int, int, int] = (170, 120, 75)) -> np.ndarray:
    """Wood grain: rings warped by noise, in the given base tone."""
    rng = _rng(name)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    warp = 0.6 * _smooth_noise(rng, size, size, 32) + 0.05 * _smooth_noise(rng, size, size, 4)
    rings = 0.5 + 0.5 * np.sin((yy * 14 + warp * 6) * np.pi)
    img = np.array(tone, np.float32) * (0.75 + 0.25 * rings[..., None])
    img *= (0.92 + 0.08 * rng.random((size, size, 1)))
    return img.clip(0, 255).astype(np.uint8)


def checker(size: int = 256, name: str = "checker", colours=((200, 200, 200), (90, 90, 110)),
            cells: int = 8) -> np.ndarray:
    """Checkerboard with slight noise (a tablecloth)."""
    rng = _rng(name)
    yy, xx = np.mgrid[0:size, 0:size] * cells // size
    mask = ((yy + xx) % 2).astype(bool)
    img = np.where(mask[..., None], np.array(colours[0], np.float32), np.array(colours[1], np.float32))
    img += 12 * (rng.random((size, size, 1)) - 0.5)
    return img.clip(0, 255).astype(np.uint8)


def marble(size: int = 256, name: str = "marble") -> np.ndarray:
    """White marble with grey veins."""
    rng = _rng(name)
    n = _smooth_noise(rng, size, size, 16) * 3 + _smooth_noise(rng, size, size, 64) * 5
    veins = np.abs(np.sin(n * np.pi)) ** 0.25
    img = 120 + 125 * veins[..., None] + np.array((0, 0, 5), np.float32)
    return np.repeat(img[..., :1], 3, -1).clip(0, 255).astype(np.uint8)


def fabric(size: int = 256, name: str = "fabric", tone=(60, 110, 70)) -> np.ndarray:
    """Woven fabric: fine crossing threads in a colour."""
    rng = _rng(name)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    weave = 0.5 + 0.25 * np.sin(xx * 1.6) + 0.25 * np.sin(yy * 1.6)
    img = np.array(tone, np.float32) * (0.7 + 0.5 * weave[..., None])
    img *= (0.9 + 0.2 * _smooth_noise(rng, size, size, 24))[..., None]
    return img.clip(0, 255).astype(np.uint8)


def wall(size: int = 256, name: str = "wall", tone=(190, 195, 200)) -> np.ndarray:
    """Painted wall / lab floor: a tone with low-frequency blotches."""
    rng = _rng(name)
    img = np.array(tone, np.float32) * (0.85 + 0.15 * _smooth_noise(rng, size, size, 32))[..., None]
    img += 8 * (rng.random((size, size, 1)) - 0.5)
    return img.clip(0, 255).astype(np.uint8)


def stripes(size: int = 64, name: str = "stripes", colours=((220, 40, 40), (240, 240, 240)),
            n: int = 6) -> np.ndarray:
    """Bold stripes (distractor objects: cans, boxes)."""
    yy = np.mgrid[0:size, 0:size][0]
    mask = (yy * n // size) % 2 == 0
    img = np.where(mask[..., None], np.array(colours[0]), np.array(colours[1]))
    return img.astype(np.uint8)


def dots(size: int = 64, name: str = "dots", bg=(40, 60, 160), fg=(250, 220, 40)) -> np.ndarray:
    """Polka dots (distractor objects)."""
    rng = _rng(name)
    img = np.full((size, size, 3), bg, np.uint8)
    for _ in range(14):
        c = rng.integers(0, size, 2)
        cv2.circle(img, (int(c[0]), int(c[1])), int(rng.integers(3, 7)), fg, -1, cv2.LINE_AA)
    return img
