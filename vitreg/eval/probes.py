"""Token probes: what do outlier (high-norm) patch tokens know compared with normal ones?

* Local information (paper Fig. 5b; reproducibility study §4.2.1): a linear classifier predicting each patch token's
  grid position, and a reconstruction of the patch's input pixels (linear, and the study's MLP with one hidden layer
  of 4x the width). Following the paper, the probes are trained on *all* patch tokens of the training images and
  evaluated separately on the outlier and normal tokens of held-out images.
* Global information (paper Table 1; study Tables 2, 4, 5): logistic regression predicting the image label from one
  token per image: [CLS], a random normal patch, or a random outlier patch, over several seeds (mean ± std).
  Images without any outlier cannot give an outlier token: they are counted, and the outlier row uses only the
  images that have one (its image count says how many).

Outliers are patch tokens whose norm (last block output, before the final norm) is above the threshold of the
diagnose rule; a threshold of None means no outliers, and every outlier row then says so instead of giving a number.
The probes read ``features`` ("prenorm" (default) or "normed" tokens) of :class:`~vitreg.eval.features.Features`.
"""

from __future__ import annotations

import numpy as np

from vitreg.errors import ConfigError, DataError
from vitreg.eval.features import Features, split_images
from vitreg.eval.fit import fit_probe, predict
from vitreg.eval.position import paired_gap, photo_resamples, position_regression
from vitreg.results.probe import GlobalProbe, GlobalScore, LocalProbes, PixelScore, PositionGap, PositionScore

GROUPS = ("all", "normal", "outlier")


def _tokens(feats: Features, which: str) -> np.ndarray:
    if which not in ("prenorm", "normed"):
        raise ConfigError(f"unknown token features {which!r}; expected prenorm or normed")
    return feats.prenorm if which == "prenorm" else feats.normed


def _group_masks(norms: np.ndarray, threshold: float | None) -> dict[str, np.ndarray]:
    out = norms > threshold if threshold is not None else np.zeros(norms.shape, bool)
    return {"all": np.ones(norms.shape, bool), "normal": ~out, "outlier": out}


def local_probes(
    feats: Features,
    threshold: float | None,
    *,
    tokens: str = "prenorm",
    test_fraction: float = 0.5,
    seed: int = 0,
    epochs: int = 60,
    mlp: bool = True,
) -> LocalProbes:
    """Position classification and pixel reconstruction per group (all / normal / outlier) on held-out images."""
    x = _tokens(feats, tokens)  # (M, h, w, C)
    m, h, w, c = x.shape
    train, test = split_images(m, test_fraction, seed)
    pos = np.broadcast_to(np.arange(h * w).reshape(1, h, w), (m, h, w))  # (M, h, w) position class
    x_tr, x_te = x[train].reshape(-1, c), x[test].reshape(-1, c)
    groups = {k: v.reshape(-1) for k, v in _group_masks(feats.norms[test], threshold).items()}  # (T*h*w,) each

    probe, std = fit_probe(x_tr, pos[train].reshape(-1), task="classify", num_classes=h * w, epochs=epochs, seed=seed)
    correct = predict(probe, std, x_te).argmax(-1) == pos[test].reshape(-1)  # (T*h*w,)
    # Chance level: always answering one position is right 1/(h*w) of the time.
    position = {}
    for g, m in groups.items():
        n, mean, note = _group_mean(correct, m)
        position[g] = PositionScore(count=n, accuracy=mean, note=note)
    # the regression of (row, column): an error in patches that can tell groups apart where top-1 is near chance
    regression = position_regression(x, train, test, _group_masks(feats.norms[test], threshold), seed=seed)

    p_tr, p_te = feats.pixels[train].reshape(len(x_tr), -1), feats.pixels[test].reshape(len(x_te), -1)
    pixel: dict[str, dict[str, PixelScore]] = {}
    pixel_gap: dict[str, PositionGap] = {}
    boot = photo_resamples(len(test), seed)  # the same resampled photos for every head
    by_photo = {g: mk.reshape(len(test), h * w) for g, mk in groups.items()}  # (T, h*w) masks
    heads = {"linear": None, "mlp": 4 * c} if mlp else {"linear": None}
    for name, hidden in heads.items():
        probe, std = fit_probe(x_tr, p_tr, task="regress", hidden=hidden, epochs=epochs, seed=seed)
        err = ((predict(probe, std, x_te) - p_te) ** 2).mean(-1)  # (T*h*w,) per-token MSE
        pixel[name] = {}
        for g, m in groups.items():
            n, mean, note = _group_mean(err, m)
            pixel[name][g] = PixelScore(count=n, mse=mean, note=note)
        gap = paired_gap(err.reshape(len(test), h * w), by_photo["outlier"], by_photo["normal"], boot)
        if gap is not None:
            pixel_gap[name] = gap
    return LocalProbes(
        tokens=tokens,
        train_images=len(train),
        test_images=len(test),
        grid=[h, w],
        chance_accuracy=1.0 / (h * w),
        pixel_units="mean squared error per pixel value, in the model's normalised input units",
        protocol="probes trained on all patch tokens of the training images, evaluated per group on held-out images",
        position=position,
        position_regression=regression,
        pixel=pixel,
        pixel_gap=pixel_gap,
    )


def _group_mean(values: np.ndarray, mask: np.ndarray) -> tuple[int, float | None, str | None]:
    """(tokens in the group, the mean of ``values`` over them, a note when there are none)."""
    n = int(mask.sum())
    if n == 0:
        return 0, None, "no tokens in this group"
    return n, float(values[mask].mean()), None


def global_probe(
    feats: Features,
    threshold: float | None,
    *,
    tokens: str = "prenorm",
    seeds: tuple[int, ...] = (0, 1, 2),
    test_fraction: float = 0.5,
    epochs: int = 100,
) -> GlobalProbe:
    """Image classification from one token per image: [CLS], a random normal patch, a random outlier patch."""
    if feats.labels is None:
        raise DataError("the global-information probe needs image labels (synthetic scenes or class subfolders)")
    if len(seeds) < 1:
        raise ConfigError("need at least one seed")
    x = _tokens(feats, tokens)  # (M, h, w, C)
    m, h, w, c = x.shape
    flat = x.reshape(m, h * w, c)
    groups = _group_masks(feats.norms, threshold)
    is_out = groups["outlier"].reshape(m, h * w)  # (M, h*w)
    has_out = is_out.any(1)  # (M,)
    has_normal = (~is_out).any(1)
    labels = feats.labels
    num_classes = int(labels.max()) + 1
    cls = feats.cls_prenorm if tokens == "prenorm" else feats.cls  # (M, C) or None
    rows: dict[str, list[float]] = {"cls": [], "normal": [], "outlier": []}
    used: dict[str, int] = {}
    for s in seeds:
        rng = np.random.default_rng(s)
        pick_normal = _random_pick(~is_out, rng)  # (M,) a normal patch per image, -1 if none
        pick_out = _random_pick(is_out, rng)
        candidates = {
            "cls": (cls, np.ones(m, bool)) if cls is not None else None,
            "normal": (flat[np.arange(m), np.maximum(pick_normal, 0)], has_normal),
            "outlier": (flat[np.arange(m), np.maximum(pick_out, 0)], has_out),
        }
        for name, cand in candidates.items():
            if cand is None:
                continue
            xs, ok = cand
            idx = np.flatnonzero(ok)
            used[name] = len(idx)
            if len(idx) < 4:
                continue
            tr, te = split_images(len(idx), test_fraction, s)
            probe, std = fit_probe(
                xs[idx[tr]], labels[idx[tr]], task="classify", num_classes=num_classes, epochs=epochs, seed=s
            )
            acc = float((predict(probe, std, xs[idx[te]]).argmax(-1) == labels[idx[te]]).mean())
            rows[name].append(acc)
    result = {}
    for name, accs in rows.items():
        score = GlobalScore(images=used.get(name, 0))
        if name == "cls" and cls is None:
            score.note = "the model has no [CLS] token"
        elif not accs:
            score.note = "too few images with such a token (need 4)" if used.get(name) else "no such token"
        else:
            score.mean, score.std, score.per_seed = float(np.mean(accs)), float(np.std(accs)), accs
        result[name] = score
    return GlobalProbe(
        tokens=tokens,
        seeds=list(seeds),
        num_classes=num_classes,
        chance_accuracy=float(np.bincount(labels).max() / len(labels)),
        images=m,
        images_without_outlier=int((~has_out).sum()),
        results=result,
    )


def _random_pick(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random True position per row of ``mask`` (M, N) -> (M,) indices, -1 for rows without any."""
    r = rng.random(mask.shape)
    r[~mask] = -1.0
    pick = r.argmax(1)
    pick[~mask.any(1)] = -1
    return pick
