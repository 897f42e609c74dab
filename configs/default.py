"""CPU demo: selective entropy sampling on the embedded synthetic NIfTI cohort.

Run lines:
  python launch.py --config=configs/default.py --workdir=runs/demo
  python launch.py --config=configs/default.py --config.al.strategy=bald --config.al.mode=selective
  python launch.py --config=configs/default.py:smoke --workdir=/tmp/smoke   # tiny, < 1 minute
  python launch.py --config=configs/default.py:multiclass --workdir=runs/multiclass  # 2 classes
  python launch.py --config=configs/default.py:clasp --workdir=runs/clasp  # ClaSP-like, 2 classes
  python launch.py sweep --config=configs/default.py:sweep --workdir=runs/sweep  # README table
  python launch.py --config=configs/default.py --config.al.annotator=human --workdir=runs/mine
  python launch.py query --workdir=runs/mine        # then: import-labels --labels=DIR, run
"""

from ml_collections import config_dict


def paper_training(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """The paper's network and training protocol (the BraTS and Spleen configs), in place."""
    config.model.base_width = 32  # the paper's network (7,762,465 parameters)
    config.model.depth = 4
    config.train.augment = True  # the published code augments the training slices
    config.train.learning_rate = 1e-4  # Adam, as in the paper
    config.train.patience = 5  # epochs without validation-loss improvement before stopping
    config.train.max_epochs = 100  # cap per round
    config.train.min_steps_per_epoch = 1  # an epoch is one pass over the labelled slices
    config.train.reset_optimizer = True  # fresh Adam each round, as the published code does
    return config


def paper_variant(config: config_dict.ConfigDict, arg: str | None, name: str):
    """Applies a paper config's argument: 'cpu' shrinks it for small machines; none keeps it."""
    if arg == "cpu":
        config.data.size = (128, 128)  # pixels: bilinear downsampling of the slices
        config.model.base_width = 16
        config.model.depth = 3
    elif arg:
        raise ValueError(f"configs/{name}: unknown config argument {arg!r}; expected 'cpu' or none")
    return config


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
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

    # Per-case evaluation each round (selal_jax/evaluation.py): every test volume at its own
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

    config.checkpoint = ckpt = config_dict.ConfigDict()
    ckpt.keep = 2  # model checkpoints kept (the per-round records are all kept)

    if arg == "smoke":
        data.synthetic.n_subjects = 8
        data.synthetic.shape = (32, 32, 12)
        data.size = (32, 32)
        model.base_width = 4
        model.depth = 2
        train.batch_size = 8
        train.eval_batch_size = 32
        # 1e-2 and 4 steps an epoch: round 0's model already predicts some target, so that
        # tests can tell a score-ranked query from pool order (1e-3 x 2 steps predicted none)
        train.learning_rate = 1e-2
        train.max_epochs = 3
        train.patience = 2
        train.min_steps_per_epoch = 4
        al.mc_passes = 3
        al.initial_size = 8
        al.query_size = 6
        al.rounds = 2
    elif arg in ("multiclass", "clasp"):  # the multi-class demo: halo and core, two channels
        data.synthetic.kind = "multiclass"  # written to <workdir>/synthetic_multiclass
        data.modality = "all"  # both channels (MRI_A, MRI_B), each z-scored on its own
        data.classes = "all"  # halo (1) and core (2): a 3-logit softmax head
        if arg == "clasp":
            # ClaSP-like (nnActive's ClaSP PE, on slices): selective entropy whose target half
            # is a round-robin over the per-class target rankings (class-stratified), each
            # ranking power-sampled (beta 1) instead of top-k. With one class the round-robin
            # is the target ranking: power-sampled selective entropy.
            al.strategy = "entropy"
            al.mode = "selective"
            al.class_balanced = True
            al.sampling = "power"
            al.sampling_beta = 1.0
    elif arg == "sweep":  # the README's CPU sweep: fewer, larger rounds and shorter training
        al.query_size = 40
        al.rounds = 4
        train.max_epochs = 12
        train.patience = 4
    elif arg:
        raise ValueError(
            f"configs/default.py: unknown config argument {arg!r}; expected 'smoke', 'multiclass', 'clasp', 'sweep' or none"
        )
    return config
