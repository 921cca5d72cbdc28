"""Where is this token? A ridge regression of each patch token's (row, column) on the patch grid, measured as the
distance in patches between the predicted and the true position, with standard errors by photo.

Why beside the paper's position classifier: on a released ViT-B (CLIP) the classifier's top-1 over 196 positions is
a few percent for every token, outliers and normal ones alike, so it cannot tell them apart; the regression's error
varies smoothly with how much position a token still carries, and does. Tokens of one photo are correlated, so the
standard errors come from a bootstrap over the test photos (resampled whole), not from the token count.

The regularisation is chosen on held-out *fit* photos (a fifth of the training photos, by photo), from
:data:`ALPHAS`, then the regression is refit on every training photo.
"""

from __future__ import annotations

import numpy as np

from vitreg.results.probe import PositionError, PositionGap, PositionRegression

ALPHAS = tuple(10.0**k for k in range(-2, 6))  # ridge strengths tried, relative to the token count
BOOTSTRAP = 200  # resamples of the test photos


def _fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge of ``y`` (n, 2) on standardised ``x`` (n, C): (mean, scale, weights (C, 2), intercept (2,))."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    ym = y.mean(0)
    gram = z.T @ z + alpha * len(z) * np.eye(z.shape[1])
    w = np.linalg.solve(gram, z.T @ (y - ym))
    return mu, sd, w, ym


def _predict(model: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    mu, sd, w, ym = model
    return ((x - mu) / sd) @ w + ym


def photo_resamples(photos: int, seed: int = 0) -> np.ndarray:
    """(BOOTSTRAP, photos) indices of test photos, each resample drawn whole (tokens of one photo are correlated)."""
    return np.random.default_rng(seed).integers(0, photos, size=(BOOTSTRAP, photos))


def paired_gap(values: np.ndarray, outlier: np.ndarray, normal: np.ndarray, boot: np.ndarray) -> PositionGap | None:
    """The outlier - normal difference of a per-token measure (``values`` (T, N) over T test photos, ``outlier`` /
    ``normal`` (T, N) masks) with its paired bootstrap standard error: each of ``boot``'s (B, T) resamples takes both
    groups from the same photos. None when either group is empty."""
    if not outlier.sum() or not normal.sum():
        return None
    sums = {"o": (values * outlier).sum(1), "n": (values * normal).sum(1)}  # (T,) per photo
    counts = {"o": outlier.sum(1), "n": normal.sum(1)}
    with np.errstate(invalid="ignore", divide="ignore"):  # nan where a resample has no such token
        d = sums["o"][boot].sum(-1) / counts["o"][boot].sum(-1) - sums["n"][boot].sum(-1) / counts["n"][boot].sum(-1)
    point = float(sums["o"].sum() / counts["o"].sum() - sums["n"].sum() / counts["n"].sum())
    photos = int((counts["o"] > 0).sum())
    return PositionGap(gap=point, se=float(np.nanstd(d, ddof=1)), photos_with_outliers=photos)


def position_regression(
    x: np.ndarray, train: np.ndarray, test: np.ndarray, groups: dict[str, np.ndarray], seed: int = 0
) -> PositionRegression:
    """``x`` (M, h, w, C) patch tokens of M photos, ``train`` / ``test`` photo indices, ``groups`` name -> (T, h, w)
    masks over the test photos. Returns the chosen alpha, and per group the mean distance (in patches) of the
    predicted position from the true one, its bootstrap standard error and token count; and the outlier - normal
    gap with its standard error (paired: each resample takes both groups from the same photos)."""
    _, h, w, c = x.shape
    rc = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).astype(np.float64)  # (h, w, 2)
    xt = x[train].reshape(-1, c).astype(np.float64)
    yt = np.broadcast_to(rc, (len(train), h, w, 2)).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    n_val = max(1, len(train) // 5) if len(train) > 1 else 0
    alpha = ALPHAS[len(ALPHAS) // 2]
    if n_val:
        val_photos, fit_photos = order[:n_val], order[n_val:]
        tok = np.arange(h * w)
        fit_rows = (fit_photos[:, None] * h * w + tok).ravel()
        val_rows = (val_photos[:, None] * h * w + tok).ravel()
        errors = []
        for a in ALPHAS:
            model = _fit(xt[fit_rows], yt[fit_rows], a)
            errors.append(float(np.linalg.norm(_predict(model, xt[val_rows]) - yt[val_rows], axis=1).mean()))
        alpha = ALPHAS[int(np.argmin(errors))]
    model = _fit(xt, yt, alpha)
    xe = x[test].reshape(-1, c).astype(np.float64)
    ye = np.broadcast_to(rc, (len(test), h, w, 2)).reshape(-1, 2)
    err = np.linalg.norm(_predict(model, xe) - ye, axis=1).reshape(len(test), h * w)  # (T, h*w) patches
    masks = {g: mk.reshape(len(test), h * w) for g, mk in groups.items()}
    sums = {g: (err * mk).sum(1) for g, mk in masks.items()}  # (T,) per photo
    counts = {g: mk.sum(1) for g, mk in masks.items()}
    boot = rng.integers(0, len(test), size=(BOOTSTRAP, len(test)))  # resampled photos

    def mean_of(g: str, rows: np.ndarray | None = None) -> np.ndarray | float | None:
        s, n = (sums[g], counts[g]) if rows is None else (sums[g][rows].sum(-1), counts[g][rows].sum(-1))
        if rows is None:
            return float(s.sum() / n.sum()) if n.sum() else None
        with np.errstate(invalid="ignore", divide="ignore"):
            return s / n  # (B,) nan where a resample has no such token

    groups_out: dict[str, PositionError] = {}
    for g in masks:
        n = int(counts[g].sum())
        if n == 0:
            groups_out[g] = PositionError(count=0, note="no tokens in this group")
            continue
        b = np.asarray(mean_of(g, boot))
        groups_out[g] = PositionError(count=n, error=float(mean_of(g)), se=float(np.nanstd(b, ddof=1)))  # type: ignore[arg-type]
    gap = paired_gap(err, masks["outlier"], masks["normal"], boot) if "outlier" in masks and "normal" in masks else None
    return PositionRegression(alpha=alpha, units="patches (Euclidean distance on the grid)", groups=groups_out, gap=gap)
