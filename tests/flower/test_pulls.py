"""fedgmi.flower.pulls: Flower's object pulls retry an unavailable object sooner."""

from __future__ import annotations

import itertools
import time

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from fedgmi.flower.pulls import shorten_pull_backoff


@pytest.fixture
def flower_defaults():
    """Put Flower's own retry defaults back after the test."""
    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    saved = [dict(f.__kwdefaults__) for f in functions]
    yield
    for function, defaults in zip(functions, saved):
        function.__kwdefaults__ = defaults


def flaky(unavailable: int):
    """A pull function whose object is unavailable ``unavailable`` times, then b"x"; and its calls."""
    calls: list[float] = []

    def pull(object_id: str) -> bytes:
        calls.append(time.monotonic())
        if len(calls) <= unavailable:
            raise ObjectUnavailableError(object_id)
        return b"x"

    return pull, calls


def test_an_unavailable_object_is_asked_for_again_after_the_short_wait(flower_defaults):
    shorten_pull_backoff()
    pull, calls = flaky(unavailable=2)
    assert inflatable_utils.pull_objects(["a"], pull) == {"a": b"x"}
    waits = [b - a for a, b in itertools.pairwise(calls)]
    assert len(waits) == 2
    # 0.02 s, then 0.04 s (+-20% jitter); Flower's own first wait is 0.8-1.2 s
    assert waits[0] < 0.5 and waits[1] < 0.5, waits


def test_the_defaults_keep_flowers_patience_and_the_pull_signature(flower_defaults):
    shorten_pull_backoff(initial_s=0.05, cap_s=0.5)
    for function in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__
        assert defaults["initial_backoff"] == 0.05 and defaults["backoff_cap"] == 0.5
        assert defaults["max_tries_per_object"] * 0.5 >= 500 * 10  # as long as Flower's 500 tries of 10 s
        assert defaults["max_time"] == 7200  # untouched


@pytest.mark.parametrize("initial, cap", [(0.0, 1.0), (-1.0, 1.0), (0.5, 0.1)])
def test_bad_waits_are_refused(initial, cap, flower_defaults):
    with pytest.raises(ValueError, match="0 < initial_s <= cap_s"):
        shorten_pull_backoff(initial, cap)
