"""Frozen-feature caching (engine/feature_cache.py): the store round trip and its keys, a damaged store rebuilt,
cached training equal to uncached training, and the off switch."""

import json

import numpy as np
import pytest
import torch

from golden_runs import warm_shared_models
from weakground.config import BackboneConfig, ExperimentConfig, from_dict
from weakground.engine import feature_cache as fc
from weakground.engine.tasks.caption_grounding import CaptionGrounding, CaptionTrainSet, caption_batches
from weakground.engine.trainer import Trainer
from weakground.methods import create_method
from weakground.methods.caption_parts import frozen_image_identity
from weakground.vision.efficientnet_lite import pretrained_lite


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKGROUND_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _chunks(values):
    return lambda positions: {"c3": values[positions], "c5": values[positions, :1] * 2}


def test_store_round_trip_reopens_the_same_values_as_memory_maps(cache):
    values = np.random.default_rng(0).standard_normal((10, 4, 3, 3)).astype(np.float32)
    keys = [f"{i:02d}" for i in range(10)]
    built = fc.cached_store("image", "enc", keys, _chunks(values), chunk=3)
    reopened = fc.open_store(built.directory, "enc", keys)
    assert isinstance(reopened.arrays["c3"], np.memmap)
    assert np.array_equal(reopened.arrays["c3"], values) and np.array_equal(reopened.arrays["c5"], values[:, :1] * 2)
    assert torch.equal(reopened.fixed("c3", np.array([7, 2])), torch.from_numpy(values[[7, 2]]))
    assert not list(built.directory.parent.glob("*.tmp*"))  # written in a temporary folder, renamed into place

    def no_compute(positions):
        raise AssertionError("a sound store is opened, not recomputed")

    again = fc.cached_store("image", "enc", keys, no_compute, chunk=3)
    assert np.array_equal(again.arrays["c3"], values)


def test_ragged_text_units_pad_as_the_encoders_pad(cache):
    lengths = np.array([2, 0, 3])
    units = np.random.default_rng(1).standard_normal((3, 3, 5)).astype(np.float32)
    for i, n in enumerate(lengths):
        units[i, n:] = 0  # the encoders' zero padding
    store = fc.cached_store("text", "words", ["a", "b", "c"],
                            lambda p: {"units": units[p], "lengths": lengths[p]}, chunk=2)
    padded, mask = store.padded_units(np.array([1, 0]))
    assert padded.shape == (2, 2, 5) and mask.tolist() == [[False, False], [True, True]]
    assert torch.equal(padded[1], torch.from_numpy(units[0, :2])) and not padded[0].any()
    padded, mask = store.padded_units(np.array([1]))
    assert padded.shape == (1, 1, 5) and not mask.any()  # a text with no word: one all-masked unit


def test_keys_change_with_image_content_size_and_encoder():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    other = image.copy()
    other[3, 4, 1] = 1
    assert fc.image_item_key(image) == fc.image_item_key(image.copy())
    assert fc.image_item_key(image) != fc.image_item_key(other)
    assert fc.image_item_key(image) != fc.image_item_key(np.zeros((8, 4, 6), dtype=np.uint8))  # same bytes, other shape
    keys = [fc.image_item_key(image)]
    assert fc.store_directory("image", "enc-a", keys) != fc.store_directory("image", "enc-b", keys)
    torch.manual_seed(0)
    a = create_method("matchmap", BackboneConfig(in_channels=3), [], {"level": "c3"}).frozen_feature_spec()
    b = create_method("matchmap", BackboneConfig(in_channels=3), [], {"level": "c4"}).frozen_feature_spec()
    assert a.image != b.image
    net = pretrained_lite(fused=True)
    assert frozen_image_identity(net, ("c3",), None) == frozen_image_identity(net, ("c3",), None)
    assert frozen_image_identity(net, ("c3",), None) != frozen_image_identity(net, ("c3",), 128)  # input size
    assert frozen_image_identity(net, ("c3",), None) != frozen_image_identity(pretrained_lite(), ("c3",), None)
    tuned = create_method("matchmap", BackboneConfig(in_channels=3), [], {"finetune_image_encoder": True})
    assert tuned.frozen_feature_spec().image == ""  # a trained encoder is never cached
    assert tuned.frozen_feature_spec().text  # its frozen MiniLM still is


@pytest.mark.parametrize("damage", ["truncate", "index", "identity"])
def test_a_damaged_store_is_rebuilt_with_a_note(cache, capsys, damage):
    values = np.arange(24, dtype=np.float32).reshape(6, 4)
    keys = [str(i) for i in range(6)]
    store = fc.cached_store("image", "enc", keys, lambda p: {"c3": values[p]}, chunk=4)
    path = store.directory
    del store
    if damage == "truncate":
        data = (path / "c3.npy").read_bytes()
        (path / "c3.npy").write_bytes(data[: len(data) // 2])
    elif damage == "index":
        (path / "index.json").write_text("{not json")
    else:
        index = json.loads((path / "index.json").read_text())
        (path / "index.json").write_text(json.dumps({**index, "identity": "another encoder"}))
    rebuilt = fc.cached_store("image", "enc", keys, lambda p: {"c3": values[p]}, chunk=4)
    assert np.array_equal(rebuilt.arrays["c3"], values)
    assert "is unusable" in capsys.readouterr().out


def test_an_unwritable_cache_falls_back_to_no_caching(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("WEAKGROUND_CACHE", str(blocker))  # a file where the folder should be
    assert fc.cached_store("image", "enc", ["a"], lambda p: {"c3": np.zeros((len(p), 2))}, chunk=1) is None
    assert "frozen encoders run every step" in capsys.readouterr().out


def _tiny_config(cache_features: bool, method: str = "matchmap", params: dict | None = None) -> ExperimentConfig:
    params = params or {"dim": 16, "image_hidden": 8}
    return from_dict(ExperimentConfig, {
        "name": "tiny", "data": {"name": "scenes", "n_train": 16, "n_val": 2, "n_test": 2, "image_size": 64},
        "backbone": {"in_channels": 3}, "method": {"name": method, "params": params},
        "pretrain": {"enabled": False},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "optimizer": "adam", "warmup_steps": 0, "device": "cpu",
                  "cache_features": cache_features}})


def _train(config: ExperimentConfig, data, run_dir) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Train without validation; the trained weights and each batch's keys."""
    warm_shared_models()  # their construction draws from torch's generator: load them before seeding
    torch.manual_seed(0)
    model = create_method(config.method.name, config.backbone, [], config.method.params)
    make_batches, steps = CaptionGrounding().batches(model, config, data)
    seen: list[list[str]] = []

    def recorded(rng):
        for batch in make_batches(rng):
            seen.append(sorted(batch))
            yield batch

    Trainer(model, config.train, run_dir, {}, progress=False).fit(recorded, steps)
    return {k: v.clone() for k, v in model.state_dict().items()}, seen


@pytest.mark.parametrize("method,params", [("matchmap", {"dim": 16, "image_hidden": 8}),
                                           ("multilevel", {"dim": 8, "levels": ["c2", "c4"]})])
def test_cached_training_matches_uncached_training(cache, tmp_path, method, params):
    task = CaptionGrounding()
    data = task.load_data(_tiny_config(True, method, params), progress=False)
    plain, plain_keys = _train(_tiny_config(False, method, params), data, tmp_path / "plain")
    cached, cached_keys = _train(_tiny_config(True, method, params), data, tmp_path / "cached")
    assert all(keys == ["captions", "images"] for keys in plain_keys)  # the off switch: no precomputed entries
    assert all("frozen_text:units" in k and any(n.startswith("frozen_image:") for n in k) for k in cached_keys)
    assert all(n in ("captions", "images") or n.startswith("frozen_") for k in cached_keys for n in k)  # no box
    assert set(plain) == set(cached)
    worst = max(float((plain[k] - cached[k]).abs().max()) for k in plain)
    # MiniLM's rounding moves with a batch's padded length (~2e-6 per feature), so the text side is not
    # bit-identical: 6e-7 (matchmap) and 2e-6 (multilevel) after these 4 steps when measured
    assert worst < 1e-4
    again, _ = _train(_tiny_config(True, method, params), data, tmp_path / "again")  # from the filled store
    assert all(torch.equal(again[k], cached[k]) for k in cached)


def test_cached_image_features_train_bit_identically(cache, tmp_path, monkeypatch):
    """Each image's features do not depend on the batch it was computed in (measured on this CPU), so with the
    text side left uncached the run is the uncached one to the last bit."""
    from weakground.methods.caption_parts import FrozenFeatureSpec
    from weakground.methods.matchmap import Matchmap

    both = Matchmap.frozen_feature_spec
    monkeypatch.setattr(Matchmap, "frozen_feature_spec", lambda self: FrozenFeatureSpec(image=both(self).image))
    data = CaptionGrounding().load_data(_tiny_config(True), progress=False)
    plain, _ = _train(_tiny_config(False), data, tmp_path / "plain")
    cached, keys = _train(_tiny_config(True), data, tmp_path / "cached")
    assert all("frozen_image:c4" in k and "frozen_text:units" not in k for k in keys)
    worst = max(float((plain[k] - cached[k]).abs().max()) for k in plain)
    assert worst <= 1e-6  # 0.0 here; another CPU's convolution may pick kernels by batch size


def test_batches_with_features_draw_what_batches_without_draw(cache):
    torch.manual_seed(0)
    model = create_method("matchmap", BackboneConfig(in_channels=3), [], {"dim": 16, "image_hidden": 8})
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    images[5] = images[2]  # a duplicate image shares its row
    captions = [[f"a red circle {i}", f"two stars {i}"] for i in range(8)]
    data = CaptionTrainSet(images, captions, [str(i) for i in range(8)])
    features = fc.caption_features(model, data.images, data.captions, enabled=True, amp=False)
    plain = list(caption_batches(data, 4, np.random.default_rng([0, 1])))
    cached = list(caption_batches(data, 4, np.random.default_rng([0, 1]), features))
    assert [b["captions"] for b in plain] == [b["captions"] for b in cached]
    model.eval()
    for p, c in zip(plain, cached):
        assert torch.equal(p["images"], c["images"])
        assert torch.equal(model.frozen_image_features(p["images"])["c4"], c["frozen_image:c4"])
    assert len(features.image_store.arrays["c4"]) == 7
    assert fc.caption_features(model, data.images, data.captions, enabled=False, amp=False) is None


def test_the_switch_is_on_by_default_and_set_off_from_the_command_line():
    from weakground.config import load_config

    assert load_config("matchmap_cpu").train.cache_features is True
    assert load_config("matchmap_cpu", ["train.cache_features=false"]).train.cache_features is False
