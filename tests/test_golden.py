"""The golden runs (tests/golden_runs.py) give the numbers recorded in tests/fixtures/golden.json.

They were recorded before the redesign moved code (issue 28) and must stay put through any reorganisation:
a tiny seeded run per method (losses after each of 3 Adam steps, a checksum of its grounding maps) and one
tiny end-to-end run per training task. On the recording machine the values agree to the last digit. Another
CPU rounds differently (MKL takes other code paths on AMD than on Intel: measured on an AMD EPYC, the MCB
runs' map sums moved by up to 7e-4 relative after three steps, and the two-epoch end-to-end run, whose metrics
count a few dozen queries, by one query in pointing), so the tolerance is relative 2e-3 for the per-method
runs and, for the end-to-end runs, relative 5e-2 or 0.03 absolute (one or two queries of the tiny test set).
A map's peak must be found among its cells within 1e-2 of the map's range of the maximum (on an Intel Xeon one
MCB map's two near-equal peaks, 7 rows apart, traded places).
Any real change (another initialisation order, another loss term, another data order) moves them by far more.
"""

import json

import pytest

from golden_runs import ALL_RUNS, GOLDEN_FILE, NearPeak

GOLDEN = json.loads(GOLDEN_FILE.read_text())


END_TO_END = {"label_grounding", "caption_grounding"}


def _compare(got, want, where, rel=2e-3, abs_=1e-7):
    if isinstance(want, dict):
        # every recorded key must still be there with its value; a report may gain new fields (e.g. presence)
        missing = sorted(set(want) - set(got)) if isinstance(got, dict) else "all"
        assert isinstance(got, dict) and not missing, f"{where}: recorded keys missing: {missing}"
        for k in want:
            _compare(got[k], want[k], f"{where}.{k}", rel, abs_)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length differs"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{where}[{i}]", rel, abs_)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rel, abs=abs_, nan_ok=True), f"{where}: {got} != {want}"
    elif isinstance(got, NearPeak):
        near = sorted(got.candidates)
        assert want in got.candidates, f"{where}: recorded peak {want} is not among the near-peak cells {near}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_every_run_has_a_recorded_value():
    assert set(GOLDEN) == set(ALL_RUNS)


@pytest.mark.parametrize("name", sorted(ALL_RUNS))
def test_golden_run_is_unchanged(name):
    rel, abs_ = (5e-2, 0.03) if name in END_TO_END else (2e-3, 1e-7)
    _compare(ALL_RUNS[name](), GOLDEN[name], name, rel, abs_)
