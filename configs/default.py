"""CPU demo: selective entropy sampling on the embedded synthetic NIfTI cohort.

Run lines:
  python launch.py --config=configs/default.py --workdir=runs/demo
  python launch.py --config=configs/default.py --config.al.strategy=bald --config.al.mode=selective
  python launch.py --config=configs/default.py:smoke --workdir=/tmp/smoke   # tiny, < 1 minute
  python launch.py --config=configs/default.py:multiclass --workdir=runs/multiclass  # 2 classes
  python launch.py --config=configs/default.py:clasp --workdir=runs/clasp  # ClaSP-like, 2 classes
  python launch.py sweep --config=configs/default.py:sweep --workdir=runs/sweep  # docs/sweeps.md
  python launch.py sweep --config=configs/default.py:compare --workdir=runs/compare  # strategies
  python launch.py sweep --config=configs/default.py:compare_smoke --workdir=/tmp/compare  # tiny
  python launch.py --config=configs/default.py --config.al.annotator=human --workdir=runs/mine
  python launch.py query --workdir=runs/mine        # then: import-labels --labels=DIR, run
"""

from ml_collections import config_dict

from selal_jax.base import schema


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


def shrink(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """The smoke sizes, in place: a tiny cohort, network and training, for tests."""
    data, model, train, al = config.data, config.model, config.train, config.al
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
    return config


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """The CPU demo (`schema.defaults()`: every field, with its unit) or a variant of it."""
    config = schema.defaults()
    data, train, al = config.data, config.train, config.al

    if arg == "smoke":
        shrink(config)
    elif arg in ("multiclass", "clasp", "compare", "compare_smoke"):  # halo and core, 2 channels
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
        if arg.startswith("compare"):
            # The strategies compared (docs/sweeps.md): the references (random among the
            # slices with predicted and with true target), entropy over all pixels and
            # selective, selective power-sampled and the ClaSP-like variant (class-stratified
            # + power); 8 seeds (bootstrap intervals need 5, a signed-rank p < 0.05 needs 6),
            # 20 initial slices + 4 rounds of 20 (14 % of the 704-slice pool): about 25 minutes
            # on an idle 2-core CPU.
            config.sweep.runs = ",".join(
                (
                    "random_predicted:all",
                    "random_label:all",
                    "entropy:all",
                    "entropy:selective",
                    "entropy:selective:sampling=power",
                    "entropy:selective:sampling=power:class_balanced=True",
                )
            )
            al.initial_size = 20
            al.query_size = 20
            al.rounds = 4
            train.max_epochs = 50  # early stopping decides (a cap of 10 stopped round 0 early)
            train.patience = 3
            config.sweep.seeds = "0,1,2,3,4,5,6,7"
        if arg == "compare_smoke":  # the same runs, tiny: 2 seeds, 2 rounds, < 5 minutes
            shrink(config)
            config.sweep.seeds = "0,1"
    elif arg == "sweep":  # docs/sweeps.md's CPU sweep: fewer, larger rounds, shorter training
        al.query_size = 40
        al.rounds = 4
        train.max_epochs = 12
        train.patience = 4
    elif arg:
        raise ValueError(
            f"configs/default.py: unknown config argument {arg!r}; expected 'smoke', "
            "'multiclass', 'clasp', 'compare', 'compare_smoke', 'sweep' or none"
        )
    return config
