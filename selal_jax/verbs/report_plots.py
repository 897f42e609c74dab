"""Figures of a report: learning curves (case Dice beside the paper's slice Dice, vs % labelled
and vs labelled target pixels) and the t-SNE of the pool embeddings.

`runs` is `selal_jax.verbs.report.load_runs`'s {run name: {seed: history}}. matplotlib and sklearn are
imported only when a figure is drawn.
"""

from __future__ import annotations

import math
import os

import numpy as np
from absl import logging

from selal_jax.base import atomic
from selal_jax.verbs.report_runs import CASE, SLICE, TITLES, dice, histories


def plot_learning_curves(runs, baseline, path: str) -> str:
    """Dice vs % labelled, one line per strategy (mean over seeds, band = min..max): the case
    Dice (left; where the records have it) beside the slice Dice (paper); `baseline` (a
    `report_runs.Baseline` or None) dashed in each panel where it has that Dice."""
    _plot_curves(runs, baseline, path, "pct_labelled", "% of the pool labelled")
    return path


def plot_learning_curves_pixels(runs, baseline, path: str) -> str | None:
    """Dice vs labelled target pixels (the annotation cost), one line per strategy: x is the mean
    over seeds of each round's `labelled_target_pixels`, y as in `plot_learning_curves`. Runs
    whose records lack the field are left out; None (nothing written) if every run lacks it."""
    with_pixels = {
        name: {
            s: h for s, h in by_seed.items() if all("labelled_target_pixels" in rec for rec in h)
        }
        for name, by_seed in runs.items()
    }
    with_pixels = {name: by_seed for name, by_seed in with_pixels.items() if by_seed}
    if not with_pixels:
        return None
    _plot_curves(
        with_pixels, baseline, path, "labelled_target_pixels", "labelled target pixels (label > 0)"
    )
    return path


YLABELS = {
    CASE: "case Dice (per test volume, mean over cases)",
    SLICE: "slice Dice (paper: mean per slice)",
}


def _plot_curves(runs, baseline, path: str, x_field: str, x_label: str) -> None:
    import matplotlib.pyplot as plt

    fig, _ = curves_figure(runs, baseline, x_field, x_label)
    fig.savefig(path)
    plt.close(fig)


def curves_figure(runs, baseline, x_field: str, x_label: str):
    """Dice against `x_field`, one panel per Dice (the case Dice first, where any record has
    it; the slice Dice (paper)), one line per strategy: the mean over seeds of each round (the
    rounds every seed has), band = min..max. Returns (figure, [panel axes]); the caller saves
    and closes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [rec for by_seed in runs.values() for h in by_seed.values() for rec in h]
    has_case = any(dice(rec, CASE) is not None for rec in records)
    metrics = (CASE, SLICE) if has_case else (SLICE,)
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(6.5 * len(metrics), 4.2), dpi=120, squeeze=False
    )
    for ax, by in zip(axes[0], metrics, strict=True):
        for name, by_seed in runs.items():
            hs = histories(by_seed)
            n = min(len(h) for h in hs)
            x = np.mean([[rec[x_field] for rec in h[:n]] for h in hs], axis=0)
            y = np.array([[_or_nan(dice(rec, by)) for rec in h[:n]] for h in hs])
            (line,) = ax.plot(x, y.mean(axis=0), marker="o", ms=3, label=f"{name} (n={len(hs)})")
            if len(hs) > 1:
                ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=line.get_color(), alpha=0.2)
        value = None if baseline is None else baseline.value(by)
        if value is not None:
            ax.axhline(value, color="k", ls="--", lw=1, label=f"supervised ({value:.3f})")
        ax.set_xlabel(x_label)
        ax.set_ylabel(YLABELS[by])
        ax.set_title(TITLES[by], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, list(axes[0])


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def tsne_coordinates(embeddings_path: str) -> np.ndarray:
    """2D t-SNE of the pool embeddings, cached beside them (tsne.npy) where that folder can be
    written (a read-only sweep reported elsewhere, `report --out`, computes it each time)."""
    cache = os.path.join(os.path.dirname(embeddings_path), "tsne.npy")
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(embeddings_path):
        return np.load(cache)
    from sklearn.manifold import TSNE

    features = np.load(embeddings_path)["features"]
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    coords = TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(features)
    try:
        with atomic.atomic_open(cache, "wb") as f:
            np.save(f, coords)
    except OSError as e:  # read-only or full: the map is drawn, only not cached
        logging.info("t-SNE coordinates not cached (%s: %s)", cache, e.strerror or e)
    return coords


def tsne_figure(runs, coords: np.ndarray, target_pixels: np.ndarray, seed: int):
    """The paper's Figure 2, one panel per strategy that has a run of `seed`: the pool's t-SNE
    coordinates [N, 2] coloured by log(1 + target pixels) in every panel, that strategy's queried
    slices (every round) marked. Returns (figure, [panel axes]); the caller saves and closes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, by_seed in runs.items() if seed in by_seed]
    n_cols = min(3, max(len(names), 1))
    n_rows = max(1, math.ceil(len(names) / n_cols))
    fig, grid = plt.subplots(
        n_rows, n_cols, figsize=(4.2 * n_cols + 0.8, 4.0 * n_rows), dpi=120, squeeze=False
    )
    grid = grid.ravel()
    for ax in grid[len(names) :]:
        ax.remove()
    panels = list(grid[: len(names)])
    color = np.log1p(target_pixels)
    sc = None
    for ax, name in zip(panels, names, strict=True):
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=color, s=5, cmap="viridis", alpha=0.6)
        ids = [j for rec in runs[name][seed] for j in rec["queried"]]
        ax.scatter(
            coords[ids, 0],
            coords[ids, 1],
            marker="x",
            s=22,
            linewidths=1.0,
            color="red",
            label=f"queried ({len(ids)})",
        )
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="best")
    if sc is not None:
        fig.colorbar(sc, ax=panels, label="log(1 + target pixels)", shrink=0.85)
    fig.suptitle(f"pool t-SNE (seed {seed}, round-0 model)")
    return fig, panels


def plot_tsne(runs, embeddings_path: str, seed: int, path: str) -> str:
    """`tsne_figure` of the pool embeddings (bottleneck features of the round-0 model) in
    `embeddings_path`, saved to `path`."""
    import matplotlib.pyplot as plt

    coords = tsne_coordinates(embeddings_path)
    target = np.load(embeddings_path)["target_pixels"]
    fig, _ = tsne_figure(runs, coords, target, seed)
    fig.savefig(path)
    plt.close(fig)
    return path
