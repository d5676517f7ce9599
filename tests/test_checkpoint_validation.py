"""Tampered checkpoints, hand-edited configs and undecodable phrases are one-line errors, never tracebacks or NaN
answers (issue 30, items 5-6)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weakground.cli.locate import default_overlay
from weakground.config import load_config
from weakground.engine.inference import check_phrases, load_checkpoint
from weakground.errors import CheckpointError, ConfigError, InputError

SOURCE = Path(__file__).parent / "fixtures" / "legacy_checkpoints" / "mcb_attention.safetensors"


def _original() -> tuple[dict, dict]:
    with safe_open(str(SOURCE), "pt") as f:
        meta = json.loads(f.metadata()["weakground"])
    return load_file(str(SOURCE)), meta


def _write(tmp_path: Path, state: dict, meta: dict) -> Path:
    path = tmp_path / "tampered.safetensors"
    save_file(state, str(path), metadata={"weakground": json.dumps(meta)})
    return path


def test_untampered_fixture_loads(tmp_path):
    state, meta = _original()
    model, config = load_checkpoint(_write(tmp_path, state, meta))
    assert config.method.name == "mcb_attention" and model.class_names == meta["class_names"]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(class_names=5), "'class_names' must be a list of strings"),
    (lambda m: m.update(class_names=["0", 1]), "'class_names' must be a list of strings"),
    (lambda m: m["config"]["method"]["params"].update(mcb_dim=-4), "cannot build method 'mcb_attention'"),
    (lambda m: m["config"]["eval"].update(box_threshold="high"), "eval.box_threshold: expected a finite number"),
    (lambda m: m["config"]["train"].update(lr=float("nan")), "train.lr: expected a finite number"),
])
def test_tampered_metadata_is_one_line_error(tmp_path, edit, message):
    state, meta = _original()
    meta = copy.deepcopy(meta)
    edit(meta)
    with pytest.raises((CheckpointError, ConfigError), match="tampered.safetensors") as info:
        load_checkpoint(_write(tmp_path, state, meta))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    state, meta = _original()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state = {k: v.clone() for k, v in state.items()}
    state[key].view(-1)[0] = value
    with pytest.raises(CheckpointError, match=f"tensor '{key}' holds non-finite values"):
        load_checkpoint(_write(tmp_path, state, meta))


def test_config_floats_must_be_finite_numbers():
    with pytest.raises(ConfigError, match="eval.box_threshold: expected a finite number, got 'high'"):
        load_config("cpu", ["eval.box_threshold=high"])
    assert load_config("cpu", ["eval.box_threshold=1"]).eval.box_threshold == 1.0  # an int is still a number


def test_phrase_that_was_not_utf8_is_refused():
    undecodable = b"caf\xe9 table".decode("utf-8", "surrogateescape")  # what argv holds for latin-1 bytes
    with pytest.raises(InputError, match="phrase 2 is not valid UTF-8"):
        check_phrases(["the cat", undecodable])
    assert check_phrases(["café table", "猫の目"]) == ["café table", "猫の目"]


def test_default_overlay_stays_under_runs():
    assert default_overlay(Path("photos/cat.jpg")) == Path("runs/locate/cat.png")
