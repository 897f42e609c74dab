"""Data parallelism with JAX's own sharding: one mesh axis, `data`, over every device of every
process.

* Training: each global batch is a `jax.Array` split along its first axis over the mesh
  (`NamedSharding(mesh, P('data'))`); the TrainState is replicated (`P()`). The jitted
  `train_step` is unchanged: jit propagates these shardings, and the compiler inserts the
  all-reduces, so the loss, the gradients (hence the Adam update) and the BatchNorm batch
  statistics are those of the whole global batch, as on one device, up to the order of the
  floating-point sums.
* Pool scoring and evaluation: each batch is split the same way, each device scores its rows, and
  the per-slice results are gathered every `FETCH_BATCHES` batches (`fetch`), then ranked on the
  host exactly as on one device.
* Multi-host: after `initialize`, `jax.devices()` lists every process's devices. Each process
  reads from its memory-mapped slice cache only the rows of each batch that its own devices hold
  (`local_rows`) and hands them to `jax.make_array_from_process_local_data`.

Batch sizes in the config are global (all devices together) and must divide by
`jax.device_count()` (`check_batch_sizes`).

Random numbers: selal-jax runs under the classic, non-partitionable threefry (`selal_jax.core.rng`).
Random bits drawn inside a sharded jit (dropout and augmentation in `train_step`) are then the
same numbers as on one device, but the compiler cannot split their generation: every device
computes the bits of the whole global batch and keeps its share. That costs a little compute per
step and keeps results equal to one device; `jax.threefry_partitionable(True)` would split the
work but draw different numbers. MC-dropout scoring draws per-slice keys (`rng.slice_key`)
under vmap, which shards along the batch like any other input.

`mesh=None` everywhere means one device and no sharding: exactly the single-device code path.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from selal_jax.base.errors import ConfigError, UserError

DATA_AXIS = "data"
# Config fields holding global batch sizes (slices per step, over all devices).
BATCH_SIZE_FIELDS = ("train.batch_size", "train.eval_batch_size")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts `jax.distributed` when the run spans several processes; returns whether it did.

    Explicit: `num_processes` > 1 with `coordinator_address` ('host:port' of process 0) and
    `process_id`. Inside an `srun` step of several tasks (SLURM_STEP_NUM_TASKS > 1; not in the
    sbatch script itself) and with no arguments, JAX detects all three from SLURM's environment,
    and gives each task the one local GPU of index SLURM_LOCALID: start one task per GPU, every
    task seeing all the node's GPUs. Must run before anything touches a JAX device.
    """
    explicit = num_processes is not None and int(num_processes) > 1
    slurm = num_processes is None and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1
    if not (explicit or slurm):
        return False
    # Cross-process computations on CPU need a collectives implementation (gloo ships with
    # jaxlib; it is the default in jax 0.10 but set it explicitly). GPUs use NCCL regardless.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        if not coordinator_address or process_id is None:
            raise UserError(
                "num_processes > 1 needs coordinator_address (host:port of process 0) and "
                "process_id (0 .. num_processes - 1)"
            )
        jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
    else:
        jax.distributed.initialize()
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: every device of every process).

    jax.devices() is ordered by process, so each process's devices hold a contiguous block of
    every batch.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def default_mesh() -> Mesh | None:
    """The mesh an experiment uses: all devices, or None (single-device code path) for one."""
    return make_mesh() if jax.device_count() > 1 else None


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh, the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def is_primary() -> bool:
    """True on the process that writes records and side files (process 0)."""
    return jax.process_index() == 0


def check_batch_sizes(train_config, n_devices: int | None = None) -> None:
    """Raises ValueError naming the config field if a global batch size does not divide evenly
    over the devices."""
    n = jax.device_count() if n_devices is None else int(n_devices)
    for field in BATCH_SIZE_FIELDS:
        value = int(train_config[field.split(".", 1)[1]])
        check_batch_size(field, value, n)


def check_batch_size(field: str, value: int, n_devices: int) -> None:
    if value % n_devices:
        raise ConfigError(
            f"config field {field}: the global batch size {value} does not divide evenly over "
            f"{n_devices} devices; use a multiple of {n_devices} "
            f"(e.g. --config.{field}={max(n_devices, value - value % n_devices)})"
        )


def local_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a global batch of `batch_size` that this process's devices hold."""
    index_map = data_sharding(mesh).addressable_devices_indices_map((batch_size,))
    spans = sorted((s[0].start or 0, s[0].stop or batch_size) for s in index_map.values())
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError("this process's devices do not hold a contiguous block of the batch")
    return slice(start, stop)


def global_batch(mesh: Mesh, local_data: np.ndarray) -> jax.Array:
    """A global jax.Array split along the batch axis, from this process's rows of it
    (`local_rows`)."""
    local_data = np.asarray(local_data)
    n_local = len(data_sharding(mesh).addressable_devices)
    global_rows = len(local_data) * mesh.size // n_local
    return jax.make_array_from_process_local_data(
        data_sharding(mesh), local_data, (global_rows, *local_data.shape[1:])
    )


def host_batch(mesh: Mesh | None, ids: np.ndarray, *arrays) -> tuple:
    """`array[ids]` for each host array (NumPy or memmap [N, ...]).

    With `mesh=None`, NumPy rows (the single-device path). Otherwise global jax.Arrays split
    along the batch axis, for which this process reads from `arrays` only its own rows of `ids`
    (the ids of the global batch, the same on every process).
    """
    ids = np.asarray(ids)
    if mesh is None:
        return tuple(a[ids] for a in arrays)
    if len(ids) % mesh.size:
        raise ValueError(
            f"a global batch of {len(ids)} slices does not divide evenly over {mesh.size} devices"
        )
    local_ids = ids[local_rows(mesh, len(ids))]
    return tuple(global_batch(mesh, np.asarray(a[local_ids])) for a in arrays)


def state_sharding(mesh: Mesh | None) -> jax.sharding.Sharding:
    """Where a run's model state lives: replicated over the mesh, or on the default device with
    `mesh=None` (where `put_replicated` puts it)."""
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return replicated(mesh)


def put_replicated(mesh: Mesh | None, tree):
    """Places a pytree on every device of the mesh (identical on every process), or on the
    default device with `mesh=None` (as `jax.device_put(tree)`)."""
    if mesh is None:
        return jax.device_put(tree)
    return jax.device_put(tree, replicated(mesh))


def fetch(mesh: Mesh | None, tree):
    """`jax.device_get` that also works for arrays split over other processes' devices: those
    are first replicated by one jitted identity over the whole tree (the compiler's all-gather),
    so that every process gets the global values."""
    leaves = jax.tree_util.tree_leaves(tree)
    if mesh is None or all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.device_get(tree)
    return jax.device_get(replicate_fn(mesh)(tree))


@functools.cache
def replicate_fn(mesh: Mesh):
    """The jitted identity that replicates a pytree over `mesh`; one per mesh, so that jit's
    cache compiles it once per tree structure (a fresh lambda per call recompiled every time)."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))


def primary_first(fn):
    """Runs `fn()` on process 0, then on the other processes (for steps that create shared files,
    e.g. the synthetic cohort and the slice cache, which the others then only read)."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if is_primary() else None
    multihost_utils.sync_global_devices("selal_jax.primary_first")
    return result if is_primary() else fn()


def padded_batches(n: int, batch_size: int):
    """Yields (index array of length batch_size, n_valid) over range(n); the last one is padded
    with index 0 (fixed shapes: one compilation for every batch)."""
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        n_valid = len(idx)
        if n_valid < batch_size:
            idx = np.concatenate([idx, np.zeros(batch_size - n_valid, np.int64)])
        yield idx, n_valid


def _ids_batch(mesh: Mesh | None, batch_ids: np.ndarray):
    """The batch's ids as int32, split over the mesh like the other inputs."""
    if mesh is None:
        return batch_ids.astype(np.int32)
    return global_batch(mesh, batch_ids[local_rows(mesh, len(batch_ids))].astype(np.int32))


# Batches whose results are fetched to the host together, the oldest first, once twice as many
# wait (the newest keep the device busy meanwhile). Each waiting result is a few small device
# buffers (about 3 KB each on XLA:CPU): fetching only after the last batch held the per-batch
# buffers of the whole pool (27 MiB more anonymous memory at 64k slices, docs/performance.md).
FETCH_BATCHES = 32


def map_batches(
    fn,
    ids,
    *arrays,
    batch_size: int,
    mesh: Mesh | None = None,
    on_batch=None,
    fetch_batches: int = FETCH_BATCHES,
):
    """`fn` over the rows `ids` of host arrays, in fixed-shape batches; results fetched in groups.

    The one batching loop of the project (big_vision's pad-shard-unpad): for each batch of
    `batch_size` ids (the last padded by repeating its first id), gathers `array[batch_ids]` of
    every host array (NumPy or memmap [N, ...]), places it on the device(s), calls
    `fn(batch_ids, *batch_arrays)` (batch_ids as int32), fetches the results of the oldest
    `fetch_batches` batches in one `device_get` whenever twice as many wait (the newest keep the
    device busy meanwhile) and the rest after the last batch, drops the padding rows and
    concatenates them.

    Args:
      fn: a jitted function returning a pytree of [batch, ...] arrays.
      ids: [n] row ids (pool ids) to map over; empty gives zero rows of the right shapes.
      arrays: host arrays indexed by `ids`.
      batch_size: rows per call (global: over all devices of `mesh`).
      mesh: None (one device, NumPy batches) or a mesh: each batch is split over its devices
        (`host_batch`; each process reads only its own rows) and results are gathered on every
        process.
      on_batch: called with the number of rows done each time a batch's results are ready (one
        batch behind the dispatch, so that waiting for it does not stall the device).
      fetch_batches: batches whose results are fetched together; fewer than twice as many wait
        on the device(s), so that device and host memory for results hold O(fetch_batches)
        buffers, not one per batch of the pool.

    Returns:
      The pytree of `fn`'s outputs as NumPy arrays with len(ids) rows.
    """
    ids = np.asarray(ids, np.int64)
    if mesh is not None:
        check_batch_size("batch size", batch_size, mesh.size)
    if fetch_batches < 1:
        raise ValueError(f"map_batches: fetch_batches must be >= 1, got {fetch_batches}")
    waiting, fetched, done = [], [], 0

    def fetch_waiting(keep: int) -> None:
        """Fetches all but the newest `keep` waiting results; drops their padding rows."""
        take = waiting[: len(waiting) - keep]
        del waiting[: len(take)]
        host = fetch(mesh, [o for o, _ in take])
        counts = [n for _, n in take]
        fetched.append(
            jax.tree_util.tree_map(
                lambda *xs: np.concatenate([x[:n] for x, n in zip(xs, counts, strict=True)]),
                *host,
            )
        )

    for idx, n_valid in padded_batches(len(ids), batch_size):
        batch_ids = ids[idx]
        out = fn(_ids_batch(mesh, batch_ids), *host_batch(mesh, batch_ids, *arrays))
        if on_batch is not None and waiting:
            jax.block_until_ready(waiting[-1][0])
            done += waiting[-1][1]
            on_batch(done)
        waiting.append((out, n_valid))
        if len(waiting) >= 2 * fetch_batches:
            fetch_waiting(keep=fetch_batches)
    if not waiting:  # no rows: zeros of the shapes one batch would give
        sample = np.zeros(1, np.int64)
        shapes = jax.eval_shape(fn, _ids_batch(None, sample), *host_batch(None, sample, *arrays))
        return jax.tree_util.tree_map(lambda x: np.zeros((0, *x.shape[1:]), x.dtype), shapes)
    fetch_waiting(keep=0)
    if on_batch is not None:
        on_batch(len(ids))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *fetched)


@dataclasses.dataclass(frozen=True)
class Batcher:
    """`map_batches` with a run's batch size and mesh bound: every batched call of a run (the
    evaluation of a split, scoring, diagnostics, predictions) takes its batches from here, so
    that none can leave the mesh out.

    Attributes:
      batch_size: rows per call, global (over all devices of `mesh`): train.eval_batch_size.
      mesh: the run's mesh, or None (one device: the single-device path).
    """

    batch_size: int
    mesh: Mesh | None = None

    def map(self, fn, ids, *arrays, on_batch=None):
        """`map_batches(fn, ids, *arrays)` in this batcher's batches over its mesh."""
        return map_batches(
            fn, ids, *arrays, batch_size=self.batch_size, mesh=self.mesh, on_batch=on_batch
        )

    def replicate(self, tree):
        """`tree` placed on every device of the mesh (`put_replicated`); as it is without one."""
        return tree if self.mesh is None else put_replicated(self.mesh, tree)
