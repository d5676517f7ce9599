import json

import pytest
import torch

from weakground.config import load_config, to_dict
from weakground.engine.checkpoint import read_checkpoint, save_checkpoint
from weakground.engine.checkpoint import checkpoint_meta
from weakground.engine.inference import load_checkpoint
from weakground.errors import CheckpointError
from weakground.methods import create_method


@pytest.fixture
def saved(tmp_path):
    config = load_config("quickstart", ["backbone.widths=[4,8,8,8]", "backbone.blocks=[1,1,1,1]",
                                        "method.params.mcb_dim=32", "method.params.hidden=4"])
    names = [str(d) for d in range(10)]
    model = create_method("mcb_attention", config.backbone, names, config.method.params)
    path = tmp_path / "ckpt" / "model.safetensors"
    save_checkpoint(path, model, {**checkpoint_meta(config, names), "stage": "train"})
    return path, model, config


def test_checkpoint_round_trip_reproduces_heatmaps(saved):
    path, model, config = saved
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == config
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(loaded.heatmaps(x, ["1", "2"]), model.heatmaps(x, ["1", "2"]))
    assert json.loads(path.with_suffix(".json").read_text())["method"] == "mcb_attention"
    assert not list(path.parent.glob("*.tmp"))  # atomic writes leave no temporaries behind


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(saved, tmp_path):
    path, model, config = saved
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt.safetensors: not a readable"):
        load_checkpoint(corrupt)
    # Same metadata, different architecture: weights do not fit the model the config describes.
    state, meta = read_checkpoint(path)
    meta["config"]["method"]["params"]["mcb_dim"] = 64
    other = create_method("mcb_attention", config.backbone, meta["class_names"], {"mcb_dim": 16, "hidden": 4})
    mismatched = tmp_path / "mismatched.safetensors"
    save_checkpoint(mismatched, other, meta)
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(mismatched)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="no weakground metadata"):
        load_checkpoint(plain)
    # A saved config with a key removed is refused rather than silently defaulted.
    meta2 = dict(meta)
    meta2["config"] = to_dict(config)
    del meta2["config"]["eval"]["box_threshold"]
    incomplete = tmp_path / "incomplete.safetensors"
    save_checkpoint(incomplete, model, meta2)
    with pytest.raises(Exception, match="missing key 'box_threshold'"):
        load_checkpoint(incomplete)
