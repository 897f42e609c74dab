"""parallel.map_batches, the one batching loop: values, padding, empty input, progress."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selal_jax.core import parallel


@jax.jit
def _row_stats(batch_ids, x, y):
    return {"id": batch_ids * 2, "sum": jnp.sum(x, axis=(1, 2)) + y, "rows": x[:, 0]}


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return rng.standard_normal((11, 3, 4)).astype(np.float32), np.arange(11, dtype=np.float32)


@pytest.mark.parametrize("batch_size", [1, 4, 11, 16])
def test_map_batches_equals_the_direct_computation(arrays, batch_size):
    x, y = arrays
    ids = np.array([7, 0, 3, 3, 10, 5, 1])
    seen = []
    out = parallel.map_batches(_row_stats, ids, x, y, batch_size=batch_size, on_batch=seen.append)
    np.testing.assert_array_equal(out["id"], 2 * ids)
    np.testing.assert_allclose(out["sum"], x[ids].sum(axis=(1, 2)) + y[ids], rtol=1e-6)
    np.testing.assert_array_equal(out["rows"], x[ids, 0])
    assert all(isinstance(v, np.ndarray) for v in out.values())
    # progress: one call per batch, as results become ready, ending at len(ids)
    n_batches = -(-len(ids) // batch_size)
    assert seen == [min((i + 1) * batch_size, len(ids)) for i in range(n_batches)]


@pytest.mark.parametrize("fetch_batches", [1, 2, 3])
def test_map_batches_fetches_results_in_groups_while_fewer_than_twice_fetch_batches_wait(
    arrays, monkeypatch, fetch_batches
):
    """Fewer than 2 x `fetch_batches` batches' results wait on the device (not one buffer per
    batch of the pool until the end); the values are those of the direct computation."""
    x, y = arrays
    ids = np.array([7, 0, 3, 3, 10, 5, 1])
    groups = []
    real_fetch = parallel.fetch

    def spy(mesh, tree):
        groups.append(len(tree))
        return real_fetch(mesh, tree)

    monkeypatch.setattr(parallel, "fetch", spy)
    out = parallel.map_batches(_row_stats, ids, x, y, batch_size=2, fetch_batches=fetch_batches)
    np.testing.assert_array_equal(out["id"], 2 * ids)
    np.testing.assert_allclose(out["sum"], x[ids].sum(axis=(1, 2)) + y[ids], rtol=1e-6)
    np.testing.assert_array_equal(out["rows"], x[ids, 0])
    assert sum(groups) == 4  # ceil(7 / 2) batches, each fetched once
    # fetch_batches at a time once 2 x fetch_batches wait; the rest (fewer) after the last
    assert groups[:-1] == [fetch_batches] * (len(groups) - 1)
    assert 0 < groups[-1] < 2 * fetch_batches


def test_map_batches_of_no_ids_gives_zero_rows_of_the_right_shapes(arrays):
    x, y = arrays
    out = parallel.map_batches(_row_stats, np.zeros(0, np.int64), x, y, batch_size=4)
    assert out["id"].shape == (0,) and out["id"].dtype == np.int32
    assert out["sum"].shape == (0,) and out["rows"].shape == (0, 4)


def test_map_batches_on_a_one_device_mesh_equals_the_single_device_path(arrays):
    x, y = arrays
    ids = np.arange(9)[::-1]
    mesh = parallel.make_mesh(jax.devices()[:1])
    a = parallel.map_batches(_row_stats, ids, x, y, batch_size=4)
    b = parallel.map_batches(_row_stats, ids, x, y, batch_size=4, mesh=mesh)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_padded_batches_cover_every_index_once():
    got = list(parallel.padded_batches(10, 4))
    assert [n for _, n in got] == [4, 4, 2]
    assert all(len(idx) == 4 for idx, _ in got)
    np.testing.assert_array_equal(np.concatenate([i[:n] for i, n in got]), np.arange(10))
