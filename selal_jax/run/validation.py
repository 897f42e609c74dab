"""The one config check every verb (run, sweep, supervised, query, import-labels, export-nnunet,
inspect) runs before any work, and the checks of the config against the loaded data
(`fit_to_data`) that a run makes before it trains."""

from __future__ import annotations

import math

import jax
from absl import logging

from selal_jax.base.errors import ConfigError
from selal_jax.core import parallel, scoring, selection
from selal_jax.core import train as train_lib
from selal_jax.core.models import DTYPES
from selal_jax.data import config_fields

ANNOTATORS = ("simulated", "human")


def validate_config(config) -> None:
    """The one config check every verb runs before any work: data fields first, then training,
    model, checkpoint and active-learning fields. Raises ValueError naming the field, the value
    and what is allowed."""
    config_fields.validate_data_config(config.data)
    train, model = config.train, config.model
    for field, value in (
        ("train.max_epochs", train.max_epochs),
        ("train.patience", train.patience),
        ("train.min_steps_per_epoch", train.min_steps_per_epoch),
        ("sweep.supervised_max_epochs", config.sweep.supervised_max_epochs),
        ("sweep.supervised_patience", config.sweep.supervised_patience),
        ("checkpoint.keep", config.checkpoint.keep),
    ):
        if int(value) < 1:
            raise ConfigError(f"config field {field}: must be >= 1, got {value}")
    lr = float(train.learning_rate)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"config field train.learning_rate: must be > 0 and finite, got {lr}")
    if not 0 <= float(model.dropout_rate) < 1:
        raise ConfigError(
            f"config field model.dropout_rate: must be in [0, 1), got {model.dropout_rate}"
        )
    if not 0 < float(model.head_bias_prior) < 1:
        raise ConfigError(
            f"config field model.head_bias_prior: must be in (0, 1), got {model.head_bias_prior}"
        )
    if model.dtype not in DTYPES:
        raise ConfigError(
            f"config field model.dtype: expected one of {tuple(DTYPES)}, got {model.dtype!r}"
        )
    al = config.al
    selection.validate_options(
        al.strategy,
        al.mode,
        al.convention,
        al.aggregation,
        al.merge,
        class_balanced=bool(al.class_balanced),
        sampling=al.sampling,
        sampling_beta=al.sampling_beta,
        max_per_case=al.max_per_case,
        min_slice_gap=al.min_slice_gap,
    )
    if config.train.loss not in train_lib.LOSSES:
        raise ConfigError(
            f"config field train.loss: expected one of {train_lib.LOSSES}, got "
            f"{config.train.loss!r}"
        )
    if al.annotator not in ANNOTATORS:
        raise ConfigError(
            f"config field al.annotator: expected one of {ANNOTATORS}, got {al.annotator!r}"
        )
    if al.strategy == "random_label" and al.annotator == "human":
        raise ConfigError(
            "config field al.strategy: 'random_label' draws among the slices whose true label "
            "has target, which a human annotator's unlabelled pool does not reveal; use "
            "al.annotator='simulated' (it is a reference, not a strategy for new data)"
        )
    for field, value in (
        ("al.query_size", al.query_size),
        ("al.initial_size", al.initial_size),
        ("train.batch_size", config.train.batch_size),
        ("train.eval_batch_size", config.train.eval_batch_size),
        ("al.mc_passes", al.mc_passes),
    ):
        if int(value) < 1:
            raise ConfigError(f"config field {field}: must be >= 1, got {value}")
    if int(al.rounds) < 0:
        raise ConfigError(f"config field al.rounds: must be >= 0, got {al.rounds}")
    if int(config.get("resume_from", -1)) < -1:
        raise ConfigError(
            f"config field resume_from: must be -1 (latest) or a round >= 0, got "
            f"{config.resume_from}"
        )
    if not 0 < float(al.target_threshold) < 1:
        raise ConfigError(
            f"config field al.target_threshold: must be in (0, 1), got {al.target_threshold}"
        )
    if not 0 < float(al.boundary_width) <= 0.5:
        raise ConfigError(
            f"config field al.boundary_width: must be in (0, 0.5], got {al.boundary_width}"
        )
    h, w = (int(s) for s in config.data.size)
    factor = 2 ** int(config.model.depth)
    if h % factor or w % factor:
        raise ConfigError(
            f"config field data.size: {h}x{w} must be divisible by 2**model.depth = {factor}"
        )
    parallel.check_batch_sizes(config.train)  # global batch sizes split over jax.device_count()


def fit_to_data(config, splits):
    """The config checks that need the data, made right after it is loaded (before a model is
    built or trained); returns the config to run with.

    A class head (C >= 2 classes) with al.convention='official' is a ConfigError (the
    published code's scoring is binary; it used to fail in the first scoring trace, after
    round 0 had trained), and so is a training split with unlabelled cases or slices under
    al.annotator='simulated' (which reveals the dataset's labels). train.eval_batch_size above the largest split (rounded up to a
    multiple of the devices) is capped to it, said once: a larger batch only pads (10^6 slices
    of padding allocate gigabytes); the cap changes no result (eval_batch_size is free to change
    on resume).

    Args:
      config: the validated run config.
      splits: data.slices.Splits of `loading.load_dataset`.

    Returns:
      `config`, or a copy with the capped train.eval_batch_size.
    """
    al, n_classes = config.al, splits.train.num_classes
    if (
        n_classes > 1
        and al.convention == "official"
        and al.strategy in scoring.UNCERTAINTY_STRATEGIES
    ):
        raise ConfigError(
            f"config field al.convention: 'official' is the published code's binary scoring, "
            f"and the dataset has {n_classes} classes ({', '.join(splits.train.class_names)}); "
            "use al.convention='paper'"
        )
    train = splits.train
    if al.annotator != "human" and not train.has_label.all():
        unlabelled = sorted({train.cases[s] for s in train.subject[~train.has_label]})
        raise ConfigError(
            f"{len(unlabelled)} training cases have no labels, or slices without (e.g. "
            f"{unlabelled[0]}), and "
            "config field al.annotator is 'simulated', which reveals the dataset's labels; "
            "use --config.al.annotator=human"
        )
    largest = max(len(splits.train), len(splits.val), len(splits.test))
    devices = jax.device_count()
    cap = -(-largest // devices) * devices
    eval_batch = int(config.train.eval_batch_size)
    if eval_batch <= cap:
        return config
    logging.warning(
        "config field train.eval_batch_size %d exceeds the largest split (%d slices): capped to %d",
        eval_batch,
        largest,
        cap,
    )
    config = config.copy_and_resolve_references()
    config.train.eval_batch_size = cap
    return config


def warn_batch_beyond_labelled(config, n_labelled: int, round_index: int) -> bool:
    """Warns when train.batch_size exceeds the labelled slices (each step then repeats them:
    slower, no better); returns whether it warned."""
    batch = int(config.train.batch_size)
    if batch <= n_labelled:
        return False
    logging.warning(
        "config field train.batch_size %d exceeds the %d labelled slices of round %d: each step "
        "repeats them %.3g times; a batch of at most %d trains as well in less time",
        batch,
        n_labelled,
        round_index,
        batch / n_labelled,
        n_labelled,
    )
    return True
