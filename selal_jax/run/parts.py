"""What a run is built from, assembled once from (config, workdir) and handed to whatever needs it.

`build(config, workdir)` checks the config, loads the data (its Settings with it), makes the
config checks that need the data, and builds the model, the optimizer, the root key and the
batcher that carries the run's mesh. Nothing here holds state that a round changes: the loop's
state (`run.state.LoopState`) is apart, and a finished run is opened read-only from the same
parts (`run.state.open_finished`). Building the parts trains nothing, allocates no parameters
and writes nothing but the data's own cache (`data.loading.load_dataset`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import optax

from selal_jax.base import schema
from selal_jax.core import parallel, rng
from selal_jax.core import train as train_lib
from selal_jax.core.models import UNet, build_model, init_variables
from selal_jax.data import loading
from selal_jax.data.cases import Settings
from selal_jax.data.slices import Splits
from selal_jax.run import checkpointing, validation


@dataclasses.dataclass(frozen=True)
class Parts:
    """The parts of one run.

    Attributes:
      config: the run's config, checked and fitted to the data (`validation.fit_to_data`).
      workdir: the run folder.
      splits: train/val/test slice sets; `splits.settings` is the preprocessing they were made
        with (every slice <-> file mapping of the run reads it).
      model: the U-Net for the data's classes and channels.
      tx: the optimizer (Adam at train.learning_rate).
      root: the root key, rng.root_key(config.seed); every key of the run derives from it.
      batches: fixed-shape batches of train.eval_batch_size over the run's mesh, for every
        batched call (evaluation, scoring, diagnostics, predictions).
    """

    config: object
    workdir: str
    splits: Splits
    model: UNet
    tx: optax.GradientTransformation
    root: jax.Array
    batches: parallel.Batcher

    @property
    def settings(self) -> Settings:
        return self.splits.settings

    @property
    def mesh(self):
        """The run's device mesh, or None (one device)."""
        return self.batches.mesh

    @functools.cached_property
    def flat_config(self) -> dict:
        """The config as checkpoints store it (`schema.flatten`)."""
        return schema.flatten(self.config)


def build(config, workdir: str, splits: Splits | None = None) -> Parts:
    """The parts of the run of `config` in `workdir` (see the module docstring).

    `splits`: the data, when the caller has made it (the benchmark's generated pool,
    `selal_jax.bench.loop`); by default `loading.load_dataset` of config.data.

    Raises the run's refusals before anything is trained: a bad config field
    (`validation.validate_config`), bad data (`loading.load_dataset`), a config that does not
    fit the data (`validation.fit_to_data`).
    """
    validation.validate_config(config)
    # Multi-host: process 0 writes the synthetic cohort and the slice cache, the rest read them.
    if splits is None:
        splits = parallel.primary_first(lambda: loading.load_dataset(config.data, workdir))
    config = validation.fit_to_data(config, splits)  # before anything is built or trained
    mesh = parallel.default_mesh()  # None with one device: the single-device path
    return Parts(
        config=config,
        workdir=workdir,
        splits=splits,
        model=build_model(config.model, splits.train.num_classes),
        tx=train_lib.make_optimizer(float(config.train.learning_rate)),
        root=rng.root_key(int(config.seed)),
        batches=parallel.Batcher(int(config.train.eval_batch_size), mesh),
    )


def _new_state(parts: Parts) -> train_lib.TrainState:
    train = parts.splits.train
    variables = init_variables(
        parts.model, rng.init_key(parts.root), *train.shape, channels=train.channels
    )
    return train_lib.create_train_state(variables, parts.tx)


def initial_state(parts: Parts) -> train_lib.TrainState:
    """The untrained model's state (parameters from `rng.init_key`), on the run's devices
    (replicated over its mesh: checkpoints are then restored replicated too)."""
    return parallel.put_replicated(parts.mesh, _new_state(parts))


def abstract_state(parts: Parts):
    """The restore target of the run's model state: its shapes and dtypes (jax.eval_shape of
    `initial_state`, nothing allocated) on the run's devices."""
    return checkpointing.abstract_target(
        lambda: _new_state(parts), parallel.state_sharding(parts.mesh)
    )
