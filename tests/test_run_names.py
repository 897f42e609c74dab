"""sweep.runs with per-run options, and the names of a run (its sweep folder, its report label)."""

import json

import pytest

from selal_jax.base import schema
from selal_jax.core import scoring, selection
from selal_jax.verbs import report, run_names, sweep
from tests.helpers import smoke_config


def test_the_syntax_reads_options_in_any_order_with_their_types():
    spec = run_names.parse_run(
        " entropy : selective : class_balanced=True:sampling=power:sampling_beta=2.5"
    )
    assert (spec.strategy, spec.mode) == ("entropy", "selective")
    assert dict(spec.options) == {"class_balanced": True, "sampling": "power", "sampling_beta": 2.5}
    spec = run_names.parse_run("random:all:max_per_case=2:min_slice_gap=3")
    assert dict(spec.options) == {"max_per_case": 2, "min_slice_gap": 3}
    assert run_names.parse_run("bald") == run_names.RunSpec("bald", "selective", (), "bald")
    specs = run_names.parse_runs("random:all, ,entropy:selective:sampling=softrank,")
    assert [s.text for s in specs] == ["random:all", "entropy:selective:sampling=softrank"]
    config = smoke_config()
    specs[1].apply(config)
    assert (config.al.strategy, config.al.mode, config.al.sampling) == (
        "entropy",
        "selective",
        "softrank",
    )
    assert config.al.class_balanced is False  # not given: the config's own


@pytest.mark.parametrize(
    "text, message",
    [
        ("entropy:selective:samplng=power", "unknown option 'samplng'"),
        ("entropy:selective:sampling", "option 'sampling' in .* has no =value"),
        ("entropy:all:max_per_case=two", "max_per_case='two' .*: expected an integer"),
        ("entropy:all:class_balanced=yes", "expected True or False"),
        ("entropy:all:sampling=power:sampling=softmax", "given twice"),
        (":all", "no strategy"),
        (" , ", "no strategy:mode pairs"),
    ],
)
def test_a_bad_item_is_one_config_error_naming_sweep_runs(text, message):
    with pytest.raises(ValueError, match=f"^config field sweep.runs: .*{message}") as info:
        run_names.parse_runs(text)
    assert "\n" not in str(info.value)


def test_without_options_the_names_are_those_of_older_sweeps():
    for strategy in scoring.STRATEGIES:
        for mode in selection.MODES:
            fields = run_names.spec_fields(run_names.parse_run(f"{strategy}:{mode}"))
            assert run_names.folder(fields) == f"{strategy}-{mode}"
            assert run_names.label(fields) == f"{strategy} {mode}"
    # records written before the options existed have none of their fields
    old = {"strategy": "entropy", "mode": "selective", "round": 0}
    assert run_names.label(run_names.record_fields(old)) == "entropy selective"


def test_the_names_list_the_options_that_act():
    def names(text):
        fields = run_names.spec_fields(run_names.parse_run(text))
        return run_names.folder(fields), run_names.label(fields)

    assert names("entropy:selective:sampling=power") == (
        "entropy-selective-power",
        "entropy selective power",
    )
    assert names("entropy:selective:sampling=power:class_balanced=True") == (
        "entropy-selective-power-class_balanced",
        "entropy selective power class_balanced",
    )
    assert names("bald:target:sampling=softmax:sampling_beta=0.5:min_slice_gap=3") == (
        "bald-target-softmax-beta0.5-min_slice_gap3",
        "bald target softmax beta=0.5 min_slice_gap=3",
    )
    # defaults and options that do not act leave no mark: beta without sampling, sampling and
    # class balance of a random strategy (it ranks nothing); volume limits act on every strategy
    assert names("entropy:all:sampling=top_k:sampling_beta=3") == ("entropy-all", "entropy all")
    assert names("random:all:sampling=power:max_per_case=2") == (
        "random-all-max_per_case2",
        "random all max_per_case=2",
    )


def test_a_sweep_refuses_two_items_that_are_one_run_and_a_bad_one_before_training(tmp_path):
    config = smoke_config()
    config.sweep.runs = "entropy:selective,entropy:selective:sampling=top_k"
    with pytest.raises(ValueError, match="sweep.runs: 'entropy:selective' and 'entropy:sel"):
        sweep.run(config, str(tmp_path / "a"))
    config.sweep.runs = "entropy:all:sampling=powr"
    with pytest.raises(ValueError, match="config field al.sampling: unknown value 'powr'"):
        sweep.run(config, str(tmp_path / "b"))
    config.sweep.runs = "entropy:all:class_balanced=True"
    with pytest.raises(ValueError, match="al.class_balanced: balances the target stream"):
        sweep.run(config, str(tmp_path / "c"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_report_labels_runs_with_their_options_and_finds_a_reference(tmp_path):
    for folder, options in (
        ("entropy-selective", {}),
        ("entropy-selective-power", {"sampling": "power", "sampling_beta": 1.0}),
        ("entropy-selective-power-class_balanced", {"sampling": "power", "class_balanced": True}),
    ):
        path = tmp_path / "seed-0" / folder
        path.mkdir(parents=True)
        record = {
            "round": 0,
            "n_labelled": 8,
            "pct_labelled": 10.0,
            "dice": 0.5,
            "dice_global": 0.5,
            "strategy": "entropy",
            "mode": "selective",
            "seed": 0,
            "queried": [],
            **options,
        }
        (path / "records.jsonl").write_text(json.dumps(record) + "\n")
    runs = report.load_runs(str(tmp_path))
    assert list(runs) == [
        "entropy selective",
        "entropy selective power",
        "entropy selective power class_balanced",
    ]
    reference = "entropy:selective:sampling=power:class_balanced=True"
    assert report.resolve_reference(runs, reference) == "entropy selective power class_balanced"
    with pytest.raises(ValueError, match="^report --reference: unknown option 'sample'"):
        report.resolve_reference(runs, "entropy:selective:sample=power")


def test_every_option_acts_after_round_zero():
    """The options a sweep's runs may differ in leave the shared round 0 as it is."""
    for name in run_names.OPTIONS:
        assert f"al.{name}" in schema.ROUND0_NEUTRAL_KEYS
