"""Pixels of a synthetic pair: a land-cover map mixed from the patch's classes, rendered through per-class
signatures with texture, illumination, noise, speckle, and optional snow or cloud."""

from __future__ import annotations

import numpy as np

from bigearth.core.bands import S1_BANDS, S2_BANDS
from bigearth.core.labels import CLC_CODE_OF_19
from bigearth.synth.signatures import CLOUD, S1_SIGNATURES, S2_SIGNATURES, SNOW


def _upsampler(n_in: int, n_out: int = 120) -> np.ndarray:
    """Bilinear interpolation matrix `[n_out, n_in]`: smooth random fields are U @ R @ U.T."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.clip(lo + 1, 0, n_in - 1)
    w = np.clip(pos - lo, 0.0, 1.0)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


_U8, _U30 = _upsampler(8), _upsampler(30)


def _field(rng: np.random.Generator, u: np.ndarray, count: int | None = None) -> np.ndarray:
    n = u.shape[1]
    if count is None:
        return u @ rng.standard_normal((n, n)).astype(np.float32) @ u.T
    return np.einsum("ij,kjl,ml->kim", u, rng.standard_normal((count, n, n)).astype(np.float32), u)


def _allocate(fields: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Give class i the `frac[i]` share of the pixels where its smooth field is highest (largest share first),
    so every labelled class is really in the patch, in connected, natural-looking regions."""
    k = len(frac)
    cover = np.full(fields.shape[1:], k - 1 if k else 0, dtype=np.int64)
    free = np.ones(fields.shape[1:], dtype=bool)
    left = free.size
    for i in np.argsort(-frac)[:-1]:
        n = min(left, round(float(frac[i]) * free.size))
        if n <= 0:
            continue
        values = np.where(free, fields[i], -np.inf).ravel()
        take = np.argpartition(values, -n)[-n:]
        cover.ravel()[take] = i
        free.ravel()[take] = False
        left -= n
    if k:
        cover[free] = int(np.argsort(-frac)[-1])
    return cover


def render_pair(
    rng: np.random.Generator, classes: list[int], snow: bool = False, cloud: bool = False
) -> dict[str, np.ndarray]:
    """Arrays of all 14 bands at native size (uint16 S2 DN, float32 S1 dB) for a patch of `classes` (BEN19)."""
    k = len(classes)
    frac = 0.4 / k + 0.6 * rng.dirichlet(np.full(k, 2.0))  # every labelled class covers at least 0.4/k
    cover = _allocate(_field(rng, _U8, k), frac)  # [120,120] index into classes

    sig = S2_SIGNATURES[classes] * (1 + 0.06 * rng.standard_normal((k, 12))).astype(np.float32)
    illumination = np.float32(rng.uniform(0.85, 1.15))
    texture = 0.05 * _field(rng, _U30)
    s2 = sig[cover] * illumination * (1 + texture[..., None])
    s2 *= 1 + 0.03 * rng.standard_normal(s2.shape).astype(np.float32)
    for present, colour, level in ((snow, SNOW, 0.3), (cloud, CLOUD, 0.6)):
        if present:
            alpha = np.clip(_field(rng, _U8) - level, 0, 1)[..., None]
            s2 = s2 * (1 - alpha) + colour * alpha

    out: dict[str, np.ndarray] = {}
    for i, band in enumerate(S2_BANDS):
        f = band.gsd // 10
        arr = s2[..., i] if f == 1 else s2[..., i].reshape(band.size, f, band.size, f).mean(axis=(1, 3))
        out[band.name] = np.clip(np.rint(arr), 1, 65535).astype(np.uint16)

    s1sig = S1_SIGNATURES[classes] + (0.8 * rng.standard_normal((k, 2))).astype(np.float32)
    linear = 10 ** (s1sig[cover] / 10) * np.float32(rng.uniform(0.8, 1.25))
    speckle = rng.gamma(4.0, 0.25, size=linear.shape).astype(np.float32)
    db = 10 * np.log10(np.maximum(linear * speckle, 1e-6))
    for i, band in enumerate(S1_BANDS):
        out[band.name] = db[..., i].astype(np.float32)
    # the v2 reference map: the CLC code of each pixel's class (uint16, 10 m grid)
    out["reference_map"] = np.asarray(CLC_CODE_OF_19, np.uint16)[np.asarray(classes)[cover]]
    return out
