"""rounds.resume_point: where a restored run continues (worked out by hand per case)."""

import pytest

from selal_jax.run import rounds


def history(last_round: int, queried: list[int]) -> list[dict]:
    return [{"round": r, "queried": [1]} for r in range(last_round)] + [
        {"round": last_round, "queried": queried}
    ]


@pytest.mark.parametrize(
    "latest, queried, n_rounds, all_labelled, expected",
    [
        (2, [5, 6], 4, False, (3, False)),  # interrupted after round 2's query: round 3 next
        (2, [], 2, False, (3, False)),  # finished at its last round: nothing left
        (2, [], 4, False, (3, True)),  # finished, resumed with 4 rounds: extended
        (2, [], 4, True, (5, False)),  # the pool was exhausted: nothing left even so
    ],
)
def test_resume_point(latest, queried, n_rounds, all_labelled, expected):
    got = rounds.resume_point(
        latest, history(latest, queried), n_rounds, all_labelled, human=False, workdir="w"
    )
    assert got == expected


def test_a_finished_human_run_is_not_extended_silently():
    with pytest.raises(ValueError, match="w: this human-annotator run finished at round 2"):
        rounds.resume_point(2, history(2, []), 4, False, human=True, workdir="w")
    # Nothing to extend: no error.
    assert rounds.resume_point(2, history(2, []), 2, False, human=True, workdir="w") == (3, False)
