"""Every batched call of the loop and of the verbs that predict gets the run's mesh: with four
devices, no call scores, evaluates or predicts the whole batch on each device (issue 28: four
callers of map_batches once passed none). tests/mesh_calls_worker.py runs whole rounds with 4
fake CPU devices and records each call of `parallel.map_batches` and `parallel.host_batch` with
the function that made it and the mesh it got.
"""

import json

import pytest

from tests.helpers import run_on_devices

# Minutes: whole runs on 4 fake devices (compiled for the mesh); run by .ci/run.
pytestmark = pytest.mark.slow
# The batched calls of a round and of the verbs (module.function that calls map_batches or
# host_batch): each must be seen, so that the check below covers it.
EXPECTED = {
    ("map_batches", "run.fit.evaluate"),  # validation loss, test Dice
    ("host_batch", "run.fit.fit"),  # training batches
    ("map_batches", "core.scoring.score_pool"),
    ("map_batches", "run.diagnostics.embed"),  # query diagnostics, the sweep's embeddings
    ("map_batches", "run.diagnostics.predicted_target_counts"),  # random_predicted
    ("map_batches", "run.evaluation.evaluate_cases"),  # per-case evaluation
    # the predictions of a finished run's model: the query export's and the gallery's
    ("map_batches", "run.state.predict"),
}


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mesh_calls")
    out = tmp / "calls.json"
    run_on_devices("tests.mesh_calls_worker", str(out), str(tmp), timeout=1200)
    return json.loads(out.read_text())


def test_every_batched_call_was_seen(calls):
    seen = {(c["call"], c["by"]) for c in calls}
    assert EXPECTED <= seen, sorted(EXPECTED - seen)


def test_every_batched_call_gets_the_four_device_mesh(calls):
    without = sorted({(c["call"], c["by"], c["devices"]) for c in calls if c["devices"] != 4})
    assert without == [], without
