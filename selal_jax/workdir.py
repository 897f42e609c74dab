"""What a run folder holds and how its stored config is read back.

ADDED_KEYS is the one table of config fields added after runs (and slice caches) may have been
written: a stored config without one had the listed value, so that such runs stay resumable and
such caches keep their key (`selal_jax.data.cache.fingerprint` leaves a `data.*` field at this
value out of its hash).
"""

from __future__ import annotations

ADDED_KEYS = {
    "al.annotator": "simulated",
    "data.allow_unlabelled": False,
    "data.classes": "",
    "data.background_values": "",
    "data.synthetic.kind": "binary",
    "train.loss": "ce",
    # Runs stored before the CPU backward passes resume with them (floats differ by rounding).
    "model.conv_impl": "auto",
    "al.class_balanced": False,
    "eval.cases": False,
    "eval.tolerance_mm": 1.0,
    "eval.save_predictions": False,
    "data.split_file": None,
    "data.group_regex": "",
    "data.reorient": "canonical",
    # () in the config; a list here as flatten_config stores tuples (cache.fingerprint and
    # config_differences compare it either way).
    "data.spacing": [],
    "resume_from": -1,
}
