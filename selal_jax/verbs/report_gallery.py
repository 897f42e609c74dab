"""The query gallery: why a round's slices were picked, one PNG row per queried slice.

Each row shows the slice's image (its first channel), the prediction of the model that chose it
(the deterministic model: P > 0.5, or the most likely class), its per-pixel uncertainty and the
target and boundary masks whose sums scored it, titled with the case, the slice index, the
stream that chose it and its recorded score. The maps are recomputed from the round's checkpoint
by the scoring program's own definitions (`scoring.pool_pixel_maps`, with the round's score key:
an MC strategy's passes are the ones that scored), so their masked sums are the recorded
scores. For a stream 'target:<c>' (class-balanced queries) the target panel is class c's mask.

The model of round r is round r's checkpoint; `checkpoint.keep` deletes older ones, and a round
whose checkpoint is gone is replaced by the latest kept round with a query (said in the log and
in the figure's title). Everything is read through `run.state.open_finished` (read-only: nothing
is written in the run folder; the slices come from the run's cache). Random strategies score
nothing, so their runs get no gallery.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from selal_jax.base import atomic
from selal_jax.base.errors import UserError
from selal_jax.core import rng, scoring
from selal_jax.run import state as state_lib
from selal_jax.run import workdir as workdir_lib
from selal_jax.verbs import report_runs, run_names

PANELS = ("image", "prediction", "uncertainty", "target mask", "boundary mask")
HEADER = 0.7  # inches above the rows: the figure's title


@dataclasses.dataclass
class GalleryRow:
    """One queried slice and the arrays its panels are drawn from, each [H, W].

    image: float32, the first channel; prediction: uint8 class indices; uncertainty: float32;
    target: bool, the target mask (class c's for stream 'target:<c>'); boundary: bool.
    """

    case: str
    slice_index: int
    pool_id: int
    stream: str
    score: float | None
    image: np.ndarray
    prediction: np.ndarray
    uncertainty: np.ndarray
    target: np.ndarray
    boundary: np.ndarray


@dataclasses.dataclass
class Gallery:
    """The gallery of one round of one run: its rows in selection order, and `note`, a sentence
    when the round shown is not the one asked for."""

    run: str
    workdir: str
    round: int
    strategy: str
    rows: list[GalleryRow]
    note: str = ""
    class_names: tuple[str, ...] = ("target",)


def choose_round(history: list[dict], kept: list[int], wanted: int | None) -> tuple[int, str]:
    """(round to show, note): `wanted` (None: the last round with a query) if its checkpoint is
    kept, else the latest kept round with a query, with a note saying so. Raises UserError if
    `wanted` queried nothing or no kept round has a query."""
    queried = [rec["round"] for rec in history if rec.get("queried")]
    if wanted is not None and wanted not in queried:
        raise UserError(
            f"--gallery_round={wanted}: that round queried nothing; rounds with a query: "
            f"{queried or 'none'}"
        )
    available = [r for r in queried if r in kept]
    if not available:
        raise UserError(
            f"no kept checkpoint of a round with a query (rounds with a query {queried}, "
            f"checkpoints kept {kept}: checkpoint.keep deletes older rounds)"
        )
    target = queried[-1] if wanted is None else wanted
    if target in kept:
        return target, ""
    note = (
        f"round {target}'s checkpoint was deleted (checkpoint.keep keeps rounds {kept}); "
        f"showing round {available[-1]}, the latest kept round with a query"
    )
    return available[-1], note


@rng.with_classic_threefry  # the random bits the run drew its MC dropout masks with
def build_gallery(workdir: str, round_index: int | None = None) -> Gallery | None:
    """The gallery of the run in `workdir` (read-only); None for a random strategy."""
    config = workdir_lib.stored_config(workdir)
    label = run_names.label(run_names.config_fields(config))
    if config.al.strategy in scoring.RANDOM_STRATEGIES:
        logging.info("%s: %s scores nothing; no query gallery", workdir, label)
        return None
    run = state_lib.open_finished(config, workdir)
    parts, al = run.parts, run.parts.config.al
    r, note = choose_round(run.history, run.checkpoint_rounds(), round_index)
    if note:
        logging.warning("%s: %s", workdir, note)
    record = next(rec for rec in run.history if rec["round"] == r)
    ids = np.asarray(record["queried"], np.int64)
    variables = run.variables(r)
    pool = run.pool
    maps = scoring.pool_pixel_maps(
        parts.model,
        variables,
        pool.images,
        ids,
        rng.score_key(rng.round_key(parts.root, r)),
        strategy=al.strategy,
        convention=al.convention,
        target_threshold=float(al.target_threshold),
        boundary_width=float(al.boundary_width),
        passes=int(al.mc_passes) if al.strategy in scoring.MC_STRATEGIES else 1,
        batch_size=parts.batches.batch_size,
        reuse_encoder=bool(al.reuse_encoder),
        mesh=parts.batches.mesh,
    )
    predictions = run.predict(ids, variables)
    streams = record.get("queried_streams") or ["?"] * len(ids)
    scores = record.get("queried_scores") or [None] * len(ids)
    rows = []
    for i, pool_id in enumerate(ids):
        stream = streams[i]
        target = maps.target[i]
        if stream.startswith("target:"):  # class-balanced: class c's ranking chose it
            target = maps.class_target[i][..., int(stream.split(":")[1]) - 1]
        image = np.asarray(pool.images[pool_id], np.float32)
        rows.append(
            GalleryRow(
                case=pool.cases[pool.subject[pool_id]],
                slice_index=int(pool.slice_index[pool_id]),
                pool_id=int(pool_id),
                stream=stream,
                score=scores[i],
                image=image if image.ndim == 2 else image[..., 0],
                prediction=predictions[i],
                uncertainty=maps.uncertainty[i],
                target=target,
                boundary=maps.boundary[i],
            )
        )
    return Gallery(label, workdir, r, al.strategy, rows, note, tuple(pool.class_names))


def draw(gallery: Gallery, path: str) -> str:
    """Writes the gallery's PNG to `path` (atomically) and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(gallery.rows)
    fig, axes = plt.subplots(
        max(n, 1), len(PANELS), figsize=(2.0 * len(PANELS), 2.1 * max(n, 1) + HEADER), dpi=80,
        squeeze=False,
    )  # fmt: skip
    classes = max([int(row.prediction.max()) for row in gallery.rows] + [1])
    for axes_row, row in zip(axes, gallery.rows, strict=False):
        score = "-" if row.score is None else f"{row.score:.4g}"
        stream = row.stream
        if stream.startswith("target:"):  # name the class
            stream += f" ({gallery.class_names[int(stream.split(':')[1]) - 1]})"
        axes_row[0].set_title(
            f"{row.case}, slice {row.slice_index}: stream {stream}, score {score}",
            fontsize=7,
            loc="left",
        )
        axes_row[0].imshow(row.image, cmap="gray")
        axes_row[1].imshow(row.prediction, cmap="viridis", vmin=0, vmax=classes)
        axes_row[2].imshow(row.uncertainty, cmap="magma")
        for ax, mask in ((axes_row[3], row.target), (axes_row[4], row.boundary)):
            ax.imshow(row.image, cmap="gray")
            ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        scored = {"all": 2, "boundary": 4}.get(
            row.stream, 3 if row.stream.startswith("t") else None
        )
        if scored is not None:  # a red frame: the pixels whose uncertainty made the score
            for spine in axes_row[scored].spines.values():
                spine.set(color="red", linewidth=2.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    title = (
        f"{gallery.run}: round {gallery.round}'s query ({n} slices)\n"
        f"{' | '.join(PANELS).replace('uncertainty', f'uncertainty ({gallery.strategy})')}; "
        "red frame: the pixels that scored"
    )
    fig.suptitle(title + (f"\n{gallery.note}" if gallery.note else ""), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - HEADER / fig.get_figheight()))  # the title above
    with atomic.atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def gallery_folders(workdir: str) -> dict[str, str]:
    """{run label: folder} of the run folders under `workdir` that keep checkpoints (the
    workdir itself for a single run), the lowest seed's folder of each label."""
    found: dict[str, tuple[int, str]] = {}
    for name, seed, folder, _ in report_runs.run_files(workdir):
        if workdir_lib.has_checkpoint(folder) and (name not in found or seed < found[name][0]):
            found[name] = (seed, folder)
    return {name: folder for name, (_, folder) in found.items()}


def write_galleries(workdir: str, out_dir: str, round_index: int | None = None) -> dict:
    """gallery.png (a single run) or gallery-<run folder>.png (a sweep: each score-based run of
    its lowest seed) in `out_dir`; returns {name: path}. A run that cannot be opened (its data
    moved, no kept checkpoint with a query) is left out with a warning, unless `round_index`
    was asked for: then any refusal comes before a file is written."""
    galleries = {}
    for name, folder in gallery_folders(workdir).items():
        try:
            gallery = build_gallery(folder, round_index)
        except UserError as e:
            if round_index is not None:
                raise
            logging.warning("no query gallery for %s: %s", name, e)
            continue
        if gallery is not None:
            single = os.path.abspath(folder) == os.path.abspath(workdir)
            galleries["gallery.png" if single else f"gallery-{os.path.basename(folder)}.png"] = (
                gallery
            )
    return {file: draw(g, os.path.join(out_dir, file)) for file, g in galleries.items()}
