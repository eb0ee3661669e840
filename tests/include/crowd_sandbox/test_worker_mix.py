"""The ``--workers`` spec: counts, or a total and shares rounded by the largest remainder."""

from __future__ import annotations

import math
import random
import re

import pytest

from include.crowd_sandbox import __main__ as cli
from include.crowd_sandbox.workers import (
    MAX_WORKERS,
    PROFILES,
    SimulatedWorkers,
    format_spec,
    parse_spec,
    worker_ids,
)


def counts(spec: str) -> dict[str, int]:
    return {profile.name: count for profile, count in parse_spec(spec)}


# --- shares ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "20:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1",
            {"diligent": 14, "careless": 2, "spammer": 2, "strategic": 2},
        ),
        # the benchmark's crowds: 30 % and 50 % bad workers, in equal shares
        (
            "10:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1",
            {"diligent": 7, "careless": 1, "spammer": 1, "strategic": 1},
        ),
        (
            "12:diligent=0.5,careless=0.1666667,spammer=0.1666667,strategic=0.1666666",
            {"diligent": 6, "careless": 2, "spammer": 2, "strategic": 2},
        ),
        # quotas 4.9, 1.05, 0.35, 0.7: floors 4+1, the 2 left go to .9 and .7
        (
            "7:diligent=0.7,careless=0.15,spammer=0.05,strategic=0.1",
            {"diligent": 5, "careless": 1, "strategic": 1},
        ),
        # a tie of remainders goes to the larger share, then to the profile named first
        ("1:careless=0.5,diligent=0.5", {"careless": 1}),
        ("2:careless=0.25,diligent=0.5,spammer=0.25", {"careless": 1, "diligent": 1}),
        ("2:careless=0.25,diligent=0.75", {"diligent": 2}),  # remainders .5 and .5
        # shares that sum to 1 within 1e-6 are fine, and rounding still sums to the total
        (
            "10:diligent=0.3333333,careless=0.3333333,spammer=0.3333334",
            {"diligent": 3, "careless": 3, "spammer": 4},
        ),
        ("5:strategic=1", {"strategic": 5}),
        ("5:diligent=1,spammer=0", {"diligent": 5}),  # a zero share starts nobody
        (" 4 : Diligent = 0.75 , strategic=.25 ", {"diligent": 3, "strategic": 1}),
        ("1000:diligent=0.5,careless=0.5", {"diligent": 500, "careless": 500}),
    ],
)
def test_shares_round_to_counts_that_sum_to_the_total(spec, expected):
    assert counts(spec) == expected
    assert counts(spec) == counts(spec)  # deterministic
    assert list(counts(spec)) == list(expected)  # in spec order


def test_largest_remainder_on_many_random_mixes():
    rng = random.Random(14)
    names = list(PROFILES)
    for _ in range(500):
        total = rng.randint(1, 200)
        chosen = rng.sample(names, rng.randint(1, len(names)))
        weights = [rng.random() for _ in chosen]
        shares = [w / sum(weights) for w in weights]
        spec = f"{total}:" + ",".join(f"{n}={s!r}" for n, s in zip(chosen, shares, strict=True))
        got = counts(spec)
        assert sum(got.values()) == total, spec
        for name, share in zip(chosen, shares, strict=True):
            quota = total * share
            # the largest-remainder property: every count is its quota rounded down or up
            assert math.floor(quota) <= got.get(name, 0) <= math.floor(quota) + 1, spec
        assert max(abs(got.get(n, 0) - total * s) for n, s in zip(chosen, shares, strict=True)) < 1


def test_a_share_spec_round_trips_through_the_counts_it_starts():
    spec = "20:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1"
    text = format_spec(parse_spec(spec))
    assert text == "diligent:14,careless:2,spammer:2,strategic:2"
    assert parse_spec(text) == parse_spec(spec)
    assert worker_ids(text) == worker_ids(spec)
    old = "diligent:6,careless:3,spammer:1"
    assert format_spec(parse_spec(old)) == old  # the old syntax is unchanged


def test_ids_of_a_mix_follow_the_scheme():
    ids = [w for w, _ in worker_ids("4:diligent=0.5,strategic=0.5")]
    assert ids == ["ADILIGENT01", "ADILIGENT02", "ASTRATEGIC01", "ASTRATEGIC02"]
    ids = [w for w, _ in worker_ids("12:strategic=1")]
    assert ids[0] == "ASTRATEGIC01" and ids[-1] == "ASTRATEGIC12"
    assert all(re.fullmatch(r"A[A-Z0-9]+", w) for w in ids)


def test_the_crowd_of_a_share_spec_is_the_same_as_of_its_counts():
    mix = SimulatedWorkers("http://127.0.0.1:1", "10:diligent=0.5,strategic=0.5", seed=3)
    same = SimulatedWorkers("http://127.0.0.1:1", "diligent:5,strategic:5", seed=3)
    assert [(w, p.name) for w, p in mix.specs] == [(w, p.name) for w, p in same.specs]
    assert mix.seed == same.seed == "3"


# --- bad specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("20:lazy=1", "unknown profile 'lazy'"),
        ("20:diligent=0.5,lazy=0.5", "unknown profile 'lazy'"),
        ("20:diligent=-0.1,careless=1.1", "between 0 and 1"),
        ("20:diligent=1.5", "between 0 and 1"),
        ("20:diligent=nan", "must be a number"),
        ("20:diligent=NaN,careless=1", "must be a number"),
        ("20:diligent=inf", "must be a number"),
        ("20:diligent=1e400", "must be a number"),
        ("20:diligent=half", "must be a number"),
        ("20:diligent=" + "9" * 5000, "must be a number"),
        ("20:diligent=0.5", "sum to 0.5, not 1"),
        ("20:diligent=0.5,careless=0.499998", "not 1"),
        ("20:diligent=0.7,careless=0.7", "sum to 1.4, not 1"),
        ("20:diligent=0,careless=0", "not 1"),
        ("0:diligent=1", "total must be at least 1"),
        ("-5:diligent=1", "total must be at least 1"),
        ("1001:diligent=1", f"at most {MAX_WORKERS}"),
        ("99999999999999999999999:diligent=1", f"at most {MAX_WORKERS}"),
        ("9" * 5000 + ":diligent=1", f"at most {MAX_WORKERS}"),
        ("2.5:diligent=1", "total before ':' must be a whole number"),
        ("nan:diligent=1", "total before ':' must be a whole number"),
        ("twenty:diligent=1", "total before ':' must be a whole number"),
        ("diligent=1", 'is not "total:profile=share'),
        ("20:", 'is not "total:profile=share'),
        ("20", 'is not "total:profile=share'),
        ("20:diligent=0.5,,careless=0.5", 'not "profile=share"'),
        ("20:=1", 'not "profile=share"'),
        ("20:diligent=0.5,careless:10", 'not "profile=share"'),
        ("20:diligent=0.5,diligent=0.5", "given twice"),
        # counts: huge totals are refused too, before any thread is made
        ("careless:1001", f"at most {MAX_WORKERS}"),
        ("diligent:600,careless:401", f"at most {MAX_WORKERS}"),
        ("diligent:" + "9" * 5000, f"at most {MAX_WORKERS}"),
        ("strategic:0", "at least 1"),
        ("   ", "empty"),
    ],
)
def test_bad_specs_are_clear_value_errors(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_spec(spec)
    with pytest.raises(ValueError, match=re.escape(message)):
        SimulatedWorkers("http://127.0.0.1:1", spec)


def test_the_cap_is_the_total_and_not_less():
    assert sum(counts(f"{MAX_WORKERS}:diligent=1").values()) == MAX_WORKERS
    assert counts(f"diligent:{MAX_WORKERS - 1},strategic:1")["strategic"] == 1


def test_the_command_line_refuses_a_bad_mix_before_starting(tmp_path, capsys):
    state = tmp_path / "sandbox.sqlite"
    argv = ["--state", str(state), "--port", "0", "--workers", "20:diligent=0.6,careless=0.6"]
    assert cli.main(argv) == 2
    assert "the shares sum to 1.2, not 1" in capsys.readouterr().err


def test_the_workers_help_names_both_syntaxes(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    help_text = "".join(capsys.readouterr().out.split())
    assert '"diligent:6,careless:3,spammer:1"' in help_text
    assert '"20:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1"' in help_text
