"""The config schema: every field with its default and unit (`defaults`), and the tables that
say how a field acts on a run. configs/*.py build on `defaults()`; the slice cache's key
(data/cache.py), a run's compatibility check (run/workdir.py) and its stored config read the
tables here, so that no other module repeats a default.

  ADDED_KEYS           fields added after runs and caches were written, with the value such a
                       run had (so it stays resumable and such a cache keeps its key)
  ONE_SHOT_KEYS        fields that act on the command that gives them, not on the run
  RESUME_NEUTRAL_KEYS  fields that may change between a run and its resumption
  ROUND0_NEUTRAL_KEYS  fields in which runs sharing a sweep's round-0 model may differ
  LAYOUT_FIELDS        config.data fields that only some layouts read, with their default

Flattened names ('train.batch_size') are how checkpoints store a config (`flatten`).
"""

from __future__ import annotations

from ml_collections import config_dict

from selal_jax.base.errors import ConfigError


def defaults() -> config_dict.ConfigDict:
    """Every config field at its default: the CPU demo on the synthetic cohort (configs/default.py
    is this; the other configs and variants override fields of it). One comment per field gives
    its unit or choices."""
    config = config_dict.ConfigDict()
    config.seed = 0  # root seed: every key is fold_in(root, round/step/slice)
    config.resume = True  # continue after the last completed round found in the workdir
    config.allow_config_change = False  # resume even if the config differs from the stored one
    # Round to resume from: -1 = the latest checkpoint; R = round R's checkpoint (a damaged newer
    # one: checkpoints of later rounds are deleted, with a warning in the log)
    config.resume_from = -1

    config.data = data = config_dict.ConfigDict()
    data.layout = (
        "synthetic"  # synthetic | msd | brats | paired | nnunetv2 (selal_jax/data/layouts.py)
    )
    data.root = config_dict.placeholder(str)  # dataset folder; synthetic: where to write it
    data.cache_dir = config_dict.placeholder(str)  # slice cache folder; None: <workdir>/cache
    # Cases without a label file (MSD entry without "label", paired image without label, BraTS
    # case without seg) join the training pool unlabelled; needs al.annotator = human.
    data.allow_unlabelled = False
    # 4D images: input channel(s) by name (MSD dataset.json 'modality') or index; several
    # comma-separated (e.g. FLAIR,T1w or 0,2: K channels, in that order) or 'all'; '' = 3D images.
    data.modality = ""
    # Foreground classes: '' = the binary target (data.label_values, or any label > 0); else
    # comma-separated classes, each one label value or several joined by '+' ('1,2,4': three
    # classes; '1+4,2': class 1 = {1, 4}, class 2 = {2}), or 'all' (every non-zero value of the
    # dataset's label map). One class ('2') is the binary target of its values. Other non-zero
    # label values are an error unless listed in data.background_values.
    data.classes = ""
    data.background_values = ""  # comma-separated label values read as background (with classes)
    data.brats = config_dict.ConfigDict()
    # flair | t1 | t1ce | t2; several comma-separated (flair,t1,t1ce,t2: K channels) or 'all'
    data.brats.modality = "flair"
    data.brats.grades = "HGG,LGG"  # comma-separated grade folders: HGG | LGG | HGG,LGG
    # whole (seg > 0) | core (labels 1, 4) | enhancing (label 4) | classes (necrotic_core 1,
    # edema 2, enhancing 4: three classes; data.classes may regroup them, e.g. 1+4,2)
    data.brats.target = "whole"
    data.paired = config_dict.ConfigDict()
    data.paired.images = "images"  # images folder, relative to data.root (or absolute)
    data.paired.labels = "labels"  # labels folder, relative to data.root (or absolute)
    data.paired.image_suffix = ""  # name suffix dropped before pairing, e.g. _0000
    data.paired.label_suffix = ""  # name suffix dropped before pairing, e.g. _seg
    data.paired.strict_labels = False  # label values outside {0} + label_values are an error
    data.synthetic = config_dict.ConfigDict()
    data.synthetic.n_subjects = 32  # volumes in the generated cohort
    data.synthetic.shape = (64, 64, 32)  # voxels (X, Y, Z) per volume
    data.synthetic.spacing = (1.0, 1.0, 2.0)  # mm
    data.synthetic.seed = 0  # generator seed (independent of config.seed)
    # binary (lesions, 1 channel) | multiclass (halo 1 around core 2, 2 channels MRI_A/MRI_B, read
    # with data.modality and data.classes 'all' unless they are set)
    data.synthetic.kind = "binary"
    data.axis = 2  # slicing axis (canonical RAS volume: 2 = axial; reorient=none: a stored axis)
    data.size = (64, 64)  # pixels (H, W) of the 2D slices; CLI: --config.data.size=128,128
    # resize (bilinear / nearest for labels) | resize_aa (anti-aliased bilinear / per-class
    # linear labels) | crop (centre crop/pad); unused with data.spacing
    data.resample = "resize"
    # (mm, mm): resample each slice to this in-plane spacing (anti-aliased images, per-class
    # labels), then centre crop/pad to data.size; () = off (fit by data.resample)
    data.spacing = ()
    data.normalisation = (
        "auto"  # auto (CT window if modality says CT, else zscore) | zscore | ct_window
    )
    data.ct_window = (-160.0, 240.0)  # HU, for ct_window
    data.label_values = ()  # label values that form the target; () = any label > 0 (not BraTS)
    data.keep_empty_slices = True  # keep slices whose normalised image is all zero (paper: keep)
    data.split = (0.7, 0.15, 0.15)  # train/val/test fractions (summing to 1), by subject
    data.split_seed = 0  # seed of the subject split
    # JSON {"train": [...], "val": [...], "test": [...]} of case names (MSD: the file stem, BraTS:
    # the case folder, paired: the matched name): this split instead of the seeded one; cases in
    # no list are left out. None = the seeded split of data.split.
    data.split_file = config_dict.placeholder(str)
    # Regular expression whose first group, searched in a case name, is its patient (e.g.
    # ^(sub-\d+)_): the seeded split keeps each patient's cases together. '' = one case each.
    data.group_regex = ""
    # canonical: reorient to RAS+ (nib.as_closest_canonical) | none: keep the stored voxel order
    # (data.axis is then an array axis of the file, spacing per stored axis)
    data.reorient = "canonical"

    config.model = model = config_dict.ConfigDict()
    model.base_width = 8  # channels of the first level (the paper's network: 32)
    model.depth = 3  # pooling steps (the paper's network: 4)
    model.dropout_rate = 0.2  # after the bottleneck and each decoder block
    model.dtype = "float32"  # computation dtype: float32 | bfloat16 (params stay float32)
    model.head_bias_prior = 0.01  # foreground probability at init (head bias = its log-odds)
    # Gradients of the transposed convolutions and poolings: auto (custom backward passes on the
    # CPU backend, Flax's layers elsewhere) | xla | custom; same parameters and forward outputs.
    model.conv_impl = "auto"

    config.train = train = config_dict.ConfigDict()
    # Adam. The paper's 1e-4 (configs/brats_lgg_flair.py, msd_spleen.py) needs far more steps
    # than a CPU demo can afford; 1e-3 converges in a few epochs here.
    train.learning_rate = 1e-3
    train.batch_size = 16  # slices per step
    train.eval_batch_size = 64  # slices per validation/test/scoring call
    train.patience = 5  # epochs without validation-loss improvement before stopping
    train.max_epochs = 20  # cap per round (paper configs: 100)
    train.min_steps_per_epoch = 16  # small labelled sets repeat slices to make an epoch this long
    # Fresh Adam each round, as the published code does (paper configs), or keep its moments. The
    # demo keeps them: on this small problem a fresh Adam's first large steps make the per-slice
    # Dice swing from round to round.
    train.reset_optimizer = False
    train.augment = False  # on-device augmentation of training batches
    # ce (BCE for one class, the paper's; softmax cross-entropy for several) | ce_dice (plus the
    # batch soft Dice loss over the foreground classes, as nnU-Net trains)
    train.loss = "ce"

    config.al = al = config_dict.ConfigDict()
    # random | random_predicted (uniform among slices with predicted target) | random_label
    # (uniform among slices whose true label has target; simulated annotator only: the upper
    # reference) | entropy | least_confidence | margin | mc_dropout | bald
    al.strategy = "entropy"
    al.mode = "selective"  # all | target | boundary | selective
    al.convention = "paper"  # paper | official (reproduces the published code's selections)
    al.target_threshold = 0.1  # T: target pixels P > T (published code: 0.1)
    al.boundary_width = 0.1  # B: boundary pixels |P - 0.5| < B (published code: 0.1)
    al.aggregation = "sum"  # sum | mean of the uncertainty over the selected pixels
    al.merge = "union"  # union | interleave, for mode=selective
    # Several classes: the target half of a selective query round-robin from per-class rankings
    al.class_balanced = False
    # How each ranking becomes a query: top_k (the ranking's first k) | power | softmax |
    # softrank (drawn without replacement, P proportional to score^beta, exp(beta * score),
    # rank^-beta; 'paper' convention; random strategies ignore it)
    al.sampling = "top_k"
    al.sampling_beta = 1.0  # beta of al.sampling (dimensionless; large = close to top_k)
    al.max_per_case = 0  # most slices one case (volume) may give to one query; 0 = no limit
    al.min_slice_gap = 0  # slices: two queried slices of one case at least this far apart; 0 = off
    al.mc_passes = 10  # stochastic passes for mc_dropout and bald
    al.reuse_encoder = True  # MC passes repeat only the decoder (all dropout is there)
    al.initial_size = 40  # labelled slices at round 0
    al.initial_from_positive = True  # draw the initial set only from slices with target
    al.query_size = 20  # slices queried per round
    al.rounds = 6  # query rounds after round 0 (stops early when the pool is exhausted)
    # Who labels the queried slices: simulated (reveals the dataset's labels, as the paper does) |
    # human (run stops after each query; launch.py query exports it, import-labels reads it back)
    al.annotator = "simulated"

    # Per-case evaluation each round (selal_jax/run/evaluation.py): every test volume at its own
    # resolution, per class, Dice / HD95 / NSD; evaluation/round_<r>.csv and case_* record fields.
    config.eval = ev = config_dict.ConfigDict()
    ev.cases = True
    ev.tolerance_mm = 1.0  # NSD tolerance, mm
    ev.save_predictions = False  # also write each test case's predicted label volume

    config.sweep = sweep = config_dict.ConfigDict()  # `python launch.py sweep`
    # strategy:mode pairs, comma-separated
    sweep.runs = "random:all,random_predicted:all,entropy:all,entropy:selective"
    sweep.seeds = "0,1,2"  # comma-separated seeds; each seed shares initial set + round-0 model
    sweep.supervised = True  # also train the supervised baseline (whole training split)
    # The baseline's own budget (the paper's early stopping), not the sweep's train.patience and
    # train.max_epochs: a baseline stopped at a short sweep's cap flatters every strategy.
    sweep.supervised_patience = 5  # epochs without validation-loss improvement before stopping
    sweep.supervised_max_epochs = 100  # epoch cap of the baseline's training

    config.checkpoint = ckpt = config_dict.ConfigDict()
    ckpt.keep = 2  # model checkpoints kept (the per-round records are all kept)
    return config


# The config fields added after runs (and slice caches) may have been written: a stored config
# without one had the listed value, so such runs stay resumable and such caches keep their key
# (`data.cache.fingerprint` leaves a data.* field at this value out of its hash).
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
    # () in the config; a list here as `flatten` stores tuples (cache.fingerprint and
    # `differences` compare it either way).
    "data.spacing": [],
    "resume_from": -1,
    "al.sampling": "top_k",
    "al.sampling_beta": 1.0,
    "al.max_per_case": 0,
    "al.min_slice_gap": 0,
    # Sweeps stored before: their baseline trained with train.patience and train.max_epochs; it
    # is retrained with these (`verbs.sweep.train_supervised` checks its stored config).
    "sweep.supervised_patience": 5,
    "sweep.supervised_max_epochs": 100,
}
# Config fields whose value acts on the command that gives it, not on the run: a run continued
# from its stored config (`run.workdir.stored_config`) has these values unless given again.
ONE_SHOT_KEYS = {"resume_from": -1, "allow_config_change": False}
# Config fields that may change between a run and its resumption without changing any result
# of the completed rounds.
RESUME_NEUTRAL_KEYS = (
    # Evaluation adds record fields; it does not change training or selection.
    "eval.cases",
    "eval.tolerance_mm",
    "eval.save_predictions",
    "sweep.runs",
    "sweep.seeds",
    "sweep.supervised",
    "sweep.supervised_patience",  # the baseline checks its own config (`train_supervised`)
    "sweep.supervised_max_epochs",
    "resume",
    "allow_config_change",
    "al.rounds",
    "checkpoint.keep",
    "train.eval_batch_size",
    "resume_from",
)
# Fields in which runs sharing one round-0 model may differ (they act after round 0's training).
ROUND0_NEUTRAL_KEYS = (
    "al.strategy",
    "al.mode",
    "al.convention",
    "al.aggregation",
    "al.merge",
    "al.target_threshold",
    "al.boundary_width",
    "al.mc_passes",
    "al.reuse_encoder",
    "al.query_size",
    "al.class_balanced",
    "al.sampling",
    "al.sampling_beta",
    "al.max_per_case",
    "al.min_slice_gap",
)

# config.data fields that only some layouts read -> those layouts. Any other layout hashes such a
# field at its default (`defaults()`), whatever the config holds: editing it (data.brats.* on an
# MSD run, data.synthetic.* on real data, data.modality on BraTS) then keeps the slice cache and
# the run's dataset fingerprint, and a resumed run ignores it.
LAYOUT_READERS = {
    "modality": ("synthetic", "msd", "paired", "nnunetv2"),  # BraTS: data.brats.modality
    "brats.modality": ("brats",),
    "brats.grades": ("brats",),
    "brats.target": ("brats",),
    "paired.images": ("paired",),
    "paired.labels": ("paired",),
    "paired.image_suffix": ("paired",),
    "paired.label_suffix": ("paired",),
    "paired.strict_labels": ("paired",),
    "synthetic.n_subjects": ("synthetic",),
    "synthetic.shape": ("synthetic",),
    "synthetic.spacing": ("synthetic",),
    "synthetic.seed": ("synthetic",),
    "synthetic.kind": ("synthetic",),
}


def get_field(config, name: str, default=None):
    """The field of a (nested) config or dict by its dotted name ('brats.grades'), else `default`."""
    node = config
    for part in name.split("."):
        if not hasattr(node, "get"):
            return default
        node = node.get(part, default)
    return node


# name -> (its default, the layouts that read it)
LAYOUT_FIELDS = {
    name: (get_field(defaults().data, name), readers) for name, readers in LAYOUT_READERS.items()
}


def flatten(config) -> dict:
    """{'train.batch_size': 8, ...}: the config as stored in checkpoints (tuples as lists)."""
    out = {}

    def walk(prefix, node):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if hasattr(value, "items"):
                walk(name + ".", value)
            else:
                out[name] = list(value) if isinstance(value, tuple) else value

    walk("", config.to_dict())
    return out


def unflatten(flat: dict) -> config_dict.ConfigDict:
    """The inverse of `flatten`, with ADDED_KEYS filled in where `flat` lacks them."""
    nested: dict = {}
    for name, value in {**ADDED_KEYS, **flat}.items():
        *parents, leaf = name.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_dict.ConfigDict(nested)


def differences(stored: dict, current: dict) -> list[str]:
    """Fields (flattened names) in which two configs differ, except RESUME_NEUTRAL_KEYS and the
    data fields that only other layouts read (LAYOUT_FIELDS: data.brats.* on an MSD run)."""
    keys = sorted(set(stored) | set(current))
    stored = {**ADDED_KEYS, **stored}
    layout = current.get("data.layout")
    unread = set()
    if stored.get("data.layout") == layout:
        unread = {f"data.{n}" for n, (_, by) in LAYOUT_FIELDS.items() if layout not in by}
    return [
        k
        for k in keys
        if k not in RESUME_NEUTRAL_KEYS
        and k not in unread
        and stored.get(k, "<absent>") != current.get(k, "<absent>")
    ]


def with_overrides(config: config_dict.ConfigDict, overrides: dict) -> config_dict.ConfigDict:
    """A copy of `config` with fields set by flattened name ({'train.patience': 9}: the
    --config.X=... flags, `FLAGS['config'].override_values`); an unknown name is a UserError."""
    config = config_dict.ConfigDict(config.to_dict())
    for name, value in overrides.items():
        *parents, leaf = name.split(".")
        node = config
        for p in parents:
            node = node.get(p)
            if not isinstance(node, config_dict.ConfigDict):
                raise ConfigError(f"unknown config field {name}")
        if leaf not in node:
            raise ConfigError(f"unknown config field {name}")
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return config
