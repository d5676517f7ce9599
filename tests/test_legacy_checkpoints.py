"""Checkpoints written before the issue-28 redesign load with today's code and give the same maps.

The files in tests/fixtures/legacy_checkpoints/ were saved by commit 417f472 (tests/make_legacy_checkpoints.py
says how), one tiny model per learned method, with the checksum of the maps that code computed on fixed images.
"""

import json
from pathlib import Path

import pytest

import weakground
from weakground.errors import CheckpointError
from golden_runs import METHOD_RUNS, _checksum, warm_shared_models
from test_golden import _compare

LEGACY = Path(__file__).parent / "fixtures" / "legacy_checkpoints"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_checkpoint_saved_before_the_redesign_gives_the_same_maps(name):
    warm_shared_models()
    g = weakground.load(LEGACY / f"{name}.safetensors")
    _, _, _, _, _, images, phrases = METHOD_RUNS[name].spec
    _compare(_checksum(g.heatmaps(images(), phrases)), EXPECTED[name], name)


def test_an_unknown_format_version_is_refused_naming_it(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = LEGACY / "mcb_attention.safetensors"
    with safe_open(str(source), "pt") as f:
        meta = json.loads(f.metadata()["weakground"])
    meta["format_version"] = 7
    target = tmp_path / "future.safetensors"
    save_file(load_file(str(source)), str(target), metadata={"weakground": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="checkpoint format version 7; weakground .* reads version 1 only"):
        weakground.load(target)
