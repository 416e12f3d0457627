"""Aligning sampled signals (joint states, commands) to the image timeline."""
from __future__ import annotations

import numpy as np


def align(sample_t: np.ndarray, values: np.ndarray, query_t: np.ndarray, method: str,
          tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Align a sampled signal to query times.

    sample_t: (K,) seconds, increasing; values: (K, D); query_t: (T,).
    method: "linear", "nearest" or "hold" (see BagConversionConfig).
    Returns (out (T, D) float64, valid (T,) bool); invalid rows are NaN.
    """
    sample_t = np.asarray(sample_t, np.float64)
    values = np.asarray(values, np.float64).reshape(len(sample_t), -1)
    q = np.asarray(query_t, np.float64)
    out = np.full((len(q), values.shape[1]), np.nan)
    valid = np.zeros(len(q), bool)
    if len(sample_t) == 0:
        return out, valid
    # tiny slack so that stamps equal up to float rounding are accepted
    tol = tolerance + 1e-9
    k = len(sample_t)
    hi = np.searchsorted(sample_t, q, side="left")          # first sample >= q
    lo = np.searchsorted(sample_t, q, side="right") - 1     # last sample <= q
    lo_c, hi_c = np.clip(lo, 0, k - 1), np.clip(hi, 0, k - 1)
    d_lo = np.where(lo >= 0, q - sample_t[lo_c], np.inf)
    d_hi = np.where(hi < k, sample_t[hi_c] - q, np.inf)
    if method == "nearest":
        use_lo = d_lo <= d_hi
        idx = np.where(use_lo, lo_c, hi_c)
        valid = np.minimum(d_lo, d_hi) <= tol
        out[valid] = values[idx[valid]]
    elif method == "hold":
        before = lo >= 0
        out[before] = values[lo_c[before]]
        valid = before.copy()
        first = ~before & (d_hi <= tol)
        out[first] = values[hi_c[first]]
        valid |= first
    elif method == "linear":
        exact = d_lo == 0
        both = (lo >= 0) & (hi < k) & (d_lo <= tol) & (d_hi <= tol) & ~exact
        span = np.where(both, sample_t[hi_c] - sample_t[lo_c], 1.0)
        w = np.where(both, d_lo / np.where(span > 0, span, 1.0), 0.0)[:, None]
        out[both] = ((1 - w) * values[lo_c] + w * values[hi_c])[both]
        out[exact] = values[lo_c[exact]]
        # outside the sampled range: the end sample, within tolerance
        edge = ~both & ~exact & (((lo < 0) & (d_hi <= tol)) | ((hi >= k) & (d_lo <= tol)))
        out[edge] = values[np.where(lo[edge] < 0, hi_c[edge], lo_c[edge])]
        valid = both | exact | edge
    else:
        raise ValueError(f"alignment method must be linear, nearest or hold, got {method!r}")
    return out, valid


def stamp_series(stamps: list[int], values: list[np.ndarray], what: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sort by stamp, drop exact duplicate stamps (noted); return (t_s (K,), values (K, D))."""
    t = np.asarray(stamps, np.int64)
    v = np.asarray(values, np.float64).reshape(len(stamps), -1)
    order = np.argsort(t, kind="stable")
    if np.any(np.diff(t) < 0):
        notes.append(f"{what}: {int(np.sum(np.diff(t) < 0))} messages out of stamp order (sorted)")
    t, v = t[order], v[order]
    keep = np.ones(len(t), bool)
    keep[1:] = np.diff(t) > 0
    if not keep.all():
        notes.append(f"{what}: {int((~keep).sum())} messages with a repeated stamp (the first one kept)")
    return t[keep] * 1e-9, v[keep]
