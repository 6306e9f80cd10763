"""The report's uncertainty: 95 % percentile-bootstrap intervals of the mean over seeds, as numbers, as
table text and as error bars."""

from __future__ import annotations

import numpy as np
import pytest

from masklam.report.plots import means_and_errors
from masklam.report.tables import fmt, mean_ci


def test_the_interval_holds_the_mean_and_is_reproducible():
    values = [0.2, 0.4, 0.9]
    mean, low, high = mean_ci(values)
    assert mean == pytest.approx(0.5) and 0.2 <= low < mean < high <= 0.9
    assert mean_ci(values) == (mean, low, high)  # seeded


def test_agreeing_seeds_give_a_narrower_interval():
    rng = np.random.default_rng(0)
    spread = lambda stat: stat[2] - stat[1]  # noqa: E731
    assert spread(mean_ci(list(1 + 0.01 * rng.normal(size=5)))) < spread(mean_ci(list(1 + 0.5 * rng.normal(size=5))))


def test_more_seeds_give_a_narrower_interval():
    few, many = mean_ci([-1.0, 0.0, 1.0]), mean_ci([-1.0, 0.0, 1.0] * 10)  # the same spread of seeds
    assert many[2] - many[1] < 0.5 * (few[2] - few[1])


def test_missing_values_and_single_seeds():
    assert mean_ci([]) is None and mean_ci([None]) is None
    assert mean_ci([0.3, None]) == (0.3, 0.3, 0.3)
    assert fmt(None) == "—" and fmt((0.3, 0.3, 0.3)) == "0.300"
    assert fmt((0.5, 0.25, 0.75)) == "0.500 [0.250, 0.750]"
    assert fmt((0.5, 0.25, 0.75), percent=True) == "50 [25, 75] %"


def test_error_bars_span_the_interval():
    means, (below, above) = means_and_errors([(0.5, 0.25, 0.75), None, (1.0, 0.9, 1.3)])
    assert means == [0.5, 0.0, 1.0]
    np.testing.assert_allclose(below, [0.25, 0.0, 0.1])
    np.testing.assert_allclose(above, [0.25, 0.0, 0.3])
