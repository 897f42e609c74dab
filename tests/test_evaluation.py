"""Per-case evaluation: the round's CSV against metrics computed here from the written
prediction and the label NIfTI, and the prediction against the model's own slices."""

import csv
import os

import jax
import nibabel as nib
import numpy as np
import pytest

from selal_jax.core import metrics
from selal_jax.core import train as train_lib
from selal_jax.data import config_fields, label_maps, loading
from selal_jax.run import evaluation, loop, state
from tests.helpers import smoke_config

KINDS = {
    "binary": {},
    "multiclass": {"data.synthetic.kind": "multiclass"},
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def evaluated_run(request, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp(f"eval-{request.param}"))
    overrides = {
        **KINDS[request.param],
        "al.rounds": 1,
        "eval.save_predictions": True,
        "train.learning_rate": 1e-2,
    }
    config = smoke_config(**overrides)
    return config, workdir, loop.run(config, workdir)


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_csv_rows_match_metrics_of_the_written_predictions(evaluated_run):
    config, workdir, history = evaluated_run
    splits = loading.load_dataset(config.data, workdir)
    test, source = splits.test, splits.source
    names = test.class_names
    settings = config_fields.make_settings(config.data, source)
    values = {name: v for name, v in zip(names, loading_values(settings), strict=True)}
    for rec in history:
        r = rec["round"]
        rows = read_rows(evaluation.csv_path(workdir, r))
        cases = [source.cases[s] for s in np.unique(test.subject)]
        assert [(row["case"], row["class"]) for row in rows] == [
            (c.case_id, n) for c in cases for n in names
        ]
        for row in rows:
            case = next(c for c in cases if c.case_id == row["case"])
            pred_file = os.path.join(
                workdir, "evaluation", f"round_{r:03d}", f"{case.case_id}.nii.gz"
            )
            pred = np.asarray(nib.load(pred_file).dataobj)
            label_img = nib.load(case.label)
            label = np.asarray(label_img.dataobj)
            spacing = label_img.header.get_zooms()[:3]
            np.testing.assert_allclose(nib.load(pred_file).affine, label_img.affine)
            v = values[row["class"]]
            expected = metrics.case_metrics(pred == v, label == v, spacing)
            columns = {"dice": "dice", "hd95": "hd95_mm", "nsd": "nsd"}  # the unit in the name
            columns.update(volume_pred="volume_pred_mm3", volume_ref="volume_ref_mm3")
            for key, column in columns.items():
                np.testing.assert_allclose(float(row[column]), expected[key], rtol=1e-9, atol=1e-9)
        got = [float(row["dice"]) for row in rows]
        np.testing.assert_allclose(rec["case_dice"], np.mean(got), rtol=1e-12)
        np.testing.assert_allclose(
            rec["case_hd95"], np.mean([float(row["hd95_mm"]) for row in rows]), rtol=1e-12
        )
        assert set(rec["case_dice_per_class"]) == set(names)
        assert rec["eval_seconds"] >= 0


def loading_values(settings):

    return label_maps.label_value_table(settings)[1:].tolist()


def test_written_prediction_holds_the_models_slices(evaluated_run):
    config, workdir, history = evaluated_run
    experiment = state.open_finished(config, workdir)
    test, source = experiment.splits.test, experiment.splits.source
    settings = config_fields.make_settings(config.data, source)
    values = np.asarray([0, *loading_values(settings)])
    subject = int(np.unique(test.subject)[0])
    ids = np.flatnonzero(test.subject == subject)
    case = source.cases[subject]
    predicted = np.asarray(
        jax.device_get(
            train_lib.predict_batch(
                experiment.variables(), test.images[ids], model=experiment.parts.model
            )
        )
    )
    last = history[-1]["round"]
    path = os.path.join(workdir, "evaluation", f"round_{last:03d}", f"{case.case_id}.nii.gz")
    canonical = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)
    planes = np.moveaxis(canonical, settings.axis, 0)[test.slice_index[ids]]
    assert tuple(settings.size) == planes.shape[1:]  # no in-plane resampling in the smoke cohort
    np.testing.assert_array_equal(planes, values[predicted])
