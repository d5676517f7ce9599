"""The golden runs (tests/golden_runs.py) give the numbers recorded in tests/fixtures/golden.json.

They were recorded before the redesign moved code (issue 28) and must stay put through any reorganisation:
a tiny seeded run per method (losses after each of 3 Adam steps, a checksum of its grounding maps) and one
tiny end-to-end run per training task. On the recording machine the values agree to the last digit; the
tolerance (relative 1e-4) lets another CPU's kernels round differently, while any real change (another
initialisation order, another loss term, another data order) moves them by far more.
"""

import json

import pytest

from golden_runs import ALL_RUNS, GOLDEN_FILE

GOLDEN = json.loads(GOLDEN_FILE.read_text())


def _compare(got, want, where):
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            _compare(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length differs"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7, nan_ok=True), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_every_run_has_a_recorded_value():
    assert set(GOLDEN) == set(ALL_RUNS)


@pytest.mark.parametrize("name", sorted(ALL_RUNS))
def test_golden_run_is_unchanged(name):
    _compare(ALL_RUNS[name](), GOLDEN[name], name)
