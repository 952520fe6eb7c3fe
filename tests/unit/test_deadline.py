"""The deadline estimator: service times and queue length in, predicted answer time out."""

from __future__ import annotations

import re

import pytest

from rayrank.funnel.deadline import StageClock


def test_a_stage_never_measured_is_assumed_instant():
    clock = StageClock()
    clock.start(500)
    assert clock.predict(20) == 0 and clock.fits(20, remaining_s=0.001)


def test_prediction_grows_with_the_queue_and_shrinks_as_it_drains():
    clock = StageClock()
    clock.observe(0.1, 10)
    waits = []
    for _ in range(3):
        waits.append(clock.predict(10))
        clock.start(10)
    assert waits == pytest.approx([0.1, 0.2, 0.3])
    clock.finish(10)
    clock.finish(10)
    assert clock.predict(10) == pytest.approx(0.2)
    clock.finish(10_000)  # never negative
    assert clock.pending == 0


def test_replicas_share_the_queue():
    one, two = StageClock(replicas=1), StageClock(replicas=2)
    for clock in (one, two):
        clock.observe(1.0, 100)
        clock.start(300)
    assert one.predict(100) == pytest.approx(2 * two.predict(100)) == pytest.approx(4.0)


def test_the_median_ignores_one_slow_call_and_the_window_forgets_old_ones():
    clock = StageClock(window=5)
    for seconds in (0.01, 0.01, 5.0, 0.01, 0.01):
        clock.observe(seconds, 1)
    assert clock.seconds_per_document == pytest.approx(0.01)
    for _ in range(5):
        clock.observe(0.04, 2)
    assert clock.seconds_per_document == pytest.approx(0.02)


def test_upper_quantile_is_more_cautious():
    median, p90 = StageClock(quantile=0.5), StageClock(quantile=0.9)
    for clock in (median, p90):
        for seconds in range(1, 11):
            clock.observe(seconds / 100, 1)
    assert p90.seconds_per_document > median.seconds_per_document


def test_empty_calls_are_not_service_times():
    clock = StageClock()
    clock.observe(0.5, 0)
    assert clock.seconds_per_document == 0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=re.escape("got window=0, quantile=0.5, replicas=1")):
        StageClock(window=0)
    with pytest.raises(ValueError, match="quantile=1.5"):
        StageClock(quantile=1.5)
