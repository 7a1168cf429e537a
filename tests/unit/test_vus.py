"""VUS-PR / VUS-ROC and TSB-AD's buffer length, held to numbers from TSB-AD's own code, plus properties.

Every expected literal below was computed by running TSB-AD's evaluation code (``generate_curve(label,
score, slidingWindow, 'opt', 250)`` from TSB_AD/evaluation/basic_metrics.py, and ``find_length_rank(x, rank=1)``
from TSB_AD/utils/slidingWindows.py) at commit 87630099ea8d0dafe89a957e31ed9720e88479eb of
github.com/TheDatumOrg/TSB-AD, with numpy 1.26.4, scikit-learn 1.9.1 and statsmodels 0.15.0, on the fixed
arrays the functions below build (no random numbers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from operations.evaluate.nab import NabFile
from operations.evaluate.nab_eval import NabRun
from operations.evaluate.skab import evaluate_skab
from operations.evaluate.vus import sliding_window_for, vus, vus_for_series, vus_pr, vus_roc
from operations.evaluate.vus_eval import nab_vus, skab_vus, vus_of_files
from tests.unit.skab_files import write_skab_file


def _labels(n: int, runs: list[tuple[int, int]]) -> np.ndarray:
    y = np.zeros(n, dtype=int)
    for a, b in runs:
        y[a:b] = 1
    return y


def two_segments() -> tuple[np.ndarray, np.ndarray, int]:
    return _labels(60, [(10, 15), (40, 43)]), ((np.arange(60) * 37) % 61) / 61.0, 10


def edges_ties_merge() -> tuple[np.ndarray, np.ndarray, int]:
    # Segments at both ends, two close enough for their buffers to merge, and scores with many ties.
    return _labels(50, [(0, 3), (8, 10), (47, 50)]), ((np.arange(50) * 7) % 5) / 4.0, 7


def informative() -> tuple[np.ndarray, np.ndarray, int]:
    y = _labels(400, [(100, 130), (250, 252), (300, 301)])
    s = ((np.arange(400) * 53) % 97) / 97.0 + 0.4 * np.convolve(y, np.ones(5) / 5.0, mode="same")
    return y, s, 20


def single_point() -> tuple[np.ndarray, np.ndarray, int]:
    # Fewer rows (30) than thresholds (250): threshold positions repeat.
    return _labels(30, [(12, 13)]), ((np.arange(30) * 11) % 13) / 13.0, 5


def buffers_merge() -> tuple[np.ndarray, np.ndarray, int]:
    # Runs 40..44 and 53..57: their buffers merge into one segment from w = 10 on; only the first scores high.
    y = _labels(100, [(40, 45), (53, 58)])
    s = ((np.arange(100) * 29) % 31) / 31.0
    s[40:45] += 1.0
    return y, s, 16


CASES = {
    "two_segments": two_segments,
    "edges_ties_merge": edges_ties_merge,
    "informative": informative,
    "single_point": single_point,
    "buffers_merge": buffers_merge,
}

# name -> ((VUS-PR, VUS-ROC) at the case's window, (VUS-PR, VUS-ROC) at window 0, VUS-PR of constant scores
# at the case's window), all from TSB-AD's code (see the module docstring).
TSB_AD = {
    "two_segments": (
        (0.25538391327266147, 0.6703703355250282),
        (0.1653992206452587, 0.5072115384615384),
        0.25803821594274395,
    ),
    "edges_ties_merge": (
        (0.2704964542551464, 0.6756750375927274),
        (0.18458333333333332, 0.5436507936507937),
        0.25497619135533234,
    ),
    "informative": (
        (0.4639924766988108, 0.8452094729728801),
        (0.38627207491917737, 0.7591583409022101),
        0.1426161353318041,
    ),
    "single_point": ((0.07186594177859085, 0.37998934227685216), (0.04, 0.1896551724137931), 0.08628621563696287),
    "buffers_merge": (
        (0.5324299362905298, 0.7855492605547267),
        (0.344724950516236, 0.5894444444444445),
        0.21416948440957811,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_tsb_ads_code(name: str) -> None:
    y, s, window = CASES[name]()
    (pr, roc), (pr0, roc0), _ = TSB_AD[name]
    result = vus(y, s, window)
    assert result.pr == pytest.approx(pr, abs=1e-12)
    assert result.roc == pytest.approx(roc, abs=1e-12)
    assert result.sliding_window == window
    assert vus_pr(y, s, 0) == pytest.approx(pr0, abs=1e-12)
    assert vus_roc(y, s, 0) == pytest.approx(roc0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_constant_scores_give_tsb_ads_floor(name: str) -> None:
    y, _, window = CASES[name]()
    assert vus_pr(y, np.zeros(y.size), window) == pytest.approx(TSB_AD[name][2], abs=1e-12)
    # Without a buffer a constant score flags every row at every threshold: precision = the label rate.
    assert vus_pr(y, np.full(y.size, 3.0), 0) == pytest.approx(y.mean(), abs=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("window", [0, 1, 6, 25])
def test_perfect_scores_give_one(name: str, window: int) -> None:
    y, _, _ = CASES[name]()
    result = vus(y, y.astype(float), window)
    assert result.pr == pytest.approx(1.0, abs=1e-12)
    assert result.roc == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_strictly_increasing_transforms_change_nothing(name: str) -> None:
    y, s, window = CASES[name]()
    base = vus(y, s, window)
    for transformed in (np.exp(3.0 * s) + 5.0, 10.0 * s - 4.0, np.arctan(s)):
        other = vus(y, transformed, window)
        assert other.pr == pytest.approx(base.pr, abs=1e-12)
        assert other.roc == pytest.approx(base.roc, abs=1e-12)


def test_better_ranking_scores_higher_and_inverted_scores_lower() -> None:
    y, s, window = informative()
    good, inverted = vus_pr(y, s, window), vus_pr(y, -s, window)
    floor = vus_pr(y, np.zeros(y.size), window)
    assert inverted < floor < good < 1.0


def test_a_buffer_credits_an_alarm_just_before_the_anomaly() -> None:
    # The score peaks 2 rows before a labelled run: no credit point-wise, credit once the buffer reaches it.
    y = _labels(200, [(100, 110)])
    s = np.zeros(200)
    s[98] = 1.0
    assert vus_pr(y, s, 10) > vus_pr(y, s, 0)


# Series -> find_length_rank(series, rank=1) from TSB-AD's code (see the module docstring).
TSB_AD_PERIODS = {"sin24": 24, "sin97": 6, "sin5": 125, "sin350": 125, "sin61": 61, "ramp": 125, "const": 125}


def _period_series(name: str) -> np.ndarray:
    i = np.arange(2000)
    return {
        "sin24": np.sin(2 * np.pi * i / 24) + 0.3 * np.sin(i * 1.3),
        "sin97": np.sin(2 * np.pi * i / 97) + 0.5 * np.cos(i * 2.1),  # the lag-6 ACF peak beats the lag-97 one
        "sin5": np.sin(2 * np.pi * i / 5),  # period below 6: the default
        "sin350": np.sin(2 * np.pi * i / 350),  # period above 303: the default
        "sin61": np.sin(2 * np.pi * i / 61),
        "ramp": i.astype(float),  # no ACF peak at all
        "const": np.ones(300),  # ACF undefined
    }[name]


@pytest.mark.parametrize("name", sorted(TSB_AD_PERIODS))
def test_sliding_window_equals_tsb_ads_find_length_rank(name: str) -> None:
    assert sliding_window_for(_period_series(name)) == TSB_AD_PERIODS[name]


def test_sliding_window_reads_the_first_channel_of_rows_by_channels() -> None:
    x = _period_series("sin24")
    assert sliding_window_for(np.column_stack([x, np.arange(x.size)])) == 24
    assert sliding_window_for(x.reshape(-1, 1)) == 24
    y, s = np.zeros(x.size, dtype=int), np.abs(x)
    y[500:520] = 1
    assert vus_for_series(y, s, x) == vus(y, s, 24)


def test_bad_input_is_refused() -> None:
    y, s, window = two_segments()
    with pytest.raises(ValueError, match="equal length"):
        vus(y, s[:-1], window)
    with pytest.raises(ValueError, match="finite"):
        vus(y, np.where(np.arange(y.size) == 3, np.nan, s), window)
    with pytest.raises(ValueError, match="one anomalous and one normal"):
        vus(np.zeros(y.size), s, window)
    with pytest.raises(ValueError, match="one anomalous and one normal"):
        vus(np.ones(y.size), s, window)
    with pytest.raises(ValueError, match="0/1"):
        vus(y * 2, s, window)
    with pytest.raises(ValueError, match="integer >= 0"):
        vus(y, s, -1)


def test_vus_of_files_skips_files_without_anomalies_and_repairs_non_finite_scores() -> None:
    y, s, _ = informative()
    series = _period_series("sin24")[: y.size]
    broken = s.copy()
    broken[0] = np.nan  # row 0 is normal and s[0] is the lowest score: NaN goes to the lowest, same ranks
    files, skipped = vus_of_files([("a", y, broken, series), ("none", np.zeros(10), np.zeros(10), np.zeros(10))])
    assert skipped == ["none"]
    assert [f.name for f in files] == ["a"]
    expected = vus(y, s, 24)
    assert files[0].sliding_window == 24 and files[0].rows == 400 and files[0].anomalous_rows == 33
    assert files[0].pr == pytest.approx(expected.pr, abs=1e-12)
    assert files[0].constant_pr == pytest.approx(vus_pr(y, np.zeros(y.size), 24), abs=1e-12)


def test_nab_vus_scores_every_row_of_files_with_windows() -> None:
    y, s, _ = informative()
    values = _period_series("sin61")[: y.size]
    stamps = pd.date_range("2020-01-01", periods=y.size, freq="5min").to_numpy()
    windows = [(100, 129), (250, 251), (300, 300)]
    files = [
        NabFile("cat/with.csv", stamps, values, windows),
        NabFile("cat/without.csv", stamps, values, []),
    ]
    run = NabRun(files, {"cat/with.csv": s, "cat/without.csv": s}, {}, {})
    summary = nab_vus(run, "some_detector")
    assert summary.skipped == ["cat/without.csv"]
    assert [f.name for f in summary.files] == ["cat/with.csv"]
    assert summary.mean_pr == pytest.approx(vus(y, s, 61).pr, abs=1e-12)
    assert summary.mean_roc == pytest.approx(vus(y, s, 61).roc, abs=1e-12)


def test_skab_vus_scores_the_test_rows_in_time_order(tmp_path: Path) -> None:
    # Two copies of one experiment, the second with rows 150 and 160 swapped in the file (labels change at
    # 155): in time order they are the same data, so their VUS must be equal, and the step must beat the floor.
    write_skab_file(tmp_path / "plain" / "v" / "1.csv", 260, anomalous_from=155, seed=4)
    write_skab_file(tmp_path / "swapped" / "v" / "1.csv", 260, anomalous_from=155, seed=4, swap=(150, 160))
    summaries = []
    for folder in ("plain", "swapped"):
        result = evaluate_skab(tmp_path / folder, "pca_t2q", protocol="skab", train_rows=100, history=3)
        summaries.append(skab_vus(result, tmp_path / folder))
    plain, swapped = summaries
    assert [f.rows for f in plain.files] == [160]  # rows after the 100 training rows
    assert plain.files[0].anomalous_rows == 105
    assert swapped.files[0].pr == pytest.approx(plain.files[0].pr, abs=1e-12)
    assert plain.files[0].constant_pr < plain.files[0].pr
    result = evaluate_skab(tmp_path / "plain", "pca_t2q", protocol="skab", train_rows=100, history=3)
    assert skab_vus(result, tmp_path / "plain", include_train=True).files[0].rows == 260
