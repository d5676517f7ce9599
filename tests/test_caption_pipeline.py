"""Caption-level training: the data path carries no box, batches are well formed, the job runs end to end."""

import json

import numpy as np
import pytest
import torch

from weakground.config import ExperimentConfig, from_dict
from weakground.data.sources import dataset_spec, scenes_root
from weakground.engine.driver import run_experiment
from weakground.engine.inference import inference_settings, load_checkpoint
from weakground.engine.tasks.caption_grounding import CaptionTrainSet, caption_batches, load_caption_train_set
from weakground.errors import ConfigError
from probe_method import HEATMAP_INPUT_SIZES, SEEN_BATCHES, CaptionProbe, ProbeConfig

def _config(**data):
    return from_dict(ExperimentConfig, {
        "name": "probe", "data": {"name": "scenes", "n_train": 12, "n_val": 4, "n_test": 4, "n_test_unseen": 3,
                                  "image_size": 64, **data},
        "backbone": {"in_channels": 3}, "method": {"name": "_caption_probe"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.05, "optimizer": "adam", "warmup_steps": 0,
                  "device": "cpu"}})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKGROUND_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_scenes_are_generated_once_into_the_cache(cache):
    config = _config()
    root = scenes_root(config.data)
    assert root.parent.parent == cache and (root / "Sentences").is_dir()
    assert len((root / "train.txt").read_text().split()) == 12
    assert len((root / "test_unseen.txt").read_text().split()) == 3
    stamp = (root / "train.txt").stat().st_mtime_ns
    assert scenes_root(config.data) == root and (root / "train.txt").stat().st_mtime_ns == stamp
    assert scenes_root(_config(seed=1).data) != root  # a different spec is a different folder


def test_dataset_spec_errors_name_the_setting(cache):
    with pytest.raises(ConfigError, match="data.path"):
        dataset_spec(_config(name="flickr30k_entities").data)
    with pytest.raises(ConfigError, match="'imagenet'"):
        dataset_spec(_config(name="imagenet").data)


def test_training_set_and_batches_carry_captions_but_no_box(cache):
    spec = dataset_spec(_config().data)
    train = load_caption_train_set(spec, "train", 64, progress=False)
    assert train.images.shape == (12, 64, 64, 3) and train.images.dtype == np.uint8
    assert set(vars(train)) == {"images", "captions", "image_ids"}
    assert all(isinstance(c, str) and c for caps in train.captions for c in caps)
    batches = list(caption_batches(train, 5, np.random.default_rng(0)))
    assert len(batches) == 2  # 12 images, batches of 5: the incomplete third is dropped
    for batch in batches:
        assert set(batch) == {"images", "captions"}
        assert batch["images"].shape == (5, 3, 64, 64) and 0 <= batch["images"].min() <= batch["images"].max() <= 1
        for image, caption in zip(batch["images"], batch["captions"]):
            i = int(np.flatnonzero((train.images == (image.permute(1, 2, 0) * 255).round().byte().numpy())
                                   .all(axis=(1, 2, 3)))[0])
            assert caption in train.captions[i]  # each image comes with one of its own captions


def test_batches_are_deterministic_per_rng():
    data = CaptionTrainSet(np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
                           [[f"caption {i} a", f"caption {i} b"] for i in range(8)], [str(i) for i in range(8)])
    a = list(caption_batches(data, 4, np.random.default_rng([0, 1])))
    b = list(caption_batches(data, 4, np.random.default_rng([0, 1])))
    assert [x["captions"] for x in a] == [x["captions"] for x in b]
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(a, b))


def test_caption_experiment_trains_without_boxes_and_scores_both_test_splits(cache, tmp_path):
    SEEN_BATCHES.clear()
    HEATMAP_INPUT_SIZES.clear()
    report = run_experiment(_config(), tmp_path / "run", progress=False)
    # validation and test read the scenes' 128-224 px images as training did: resized to the 64 px square
    assert HEATMAP_INPUT_SIZES and set(HEATMAP_INPUT_SIZES) == {(64, 64)}
    assert SEEN_BATCHES and all(set(b) == {"images", "captions"} for b in SEEN_BATCHES)
    assert len(SEEN_BATCHES) == 2 * 3  # 2 epochs x (12 images // batch 4)
    for split in ("test", "test_unseen"):
        r = report[split]
        assert 0 <= r["pointing_accuracy"] <= 1 and r["n_queries"] > 0
        assert set(r["recall"]) == {"text_to_image", "image_to_text"}
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["test"]["pointing_accuracy"] == report["test"]["pointing_accuracy"]
    assert len(saved["train"]["history"]) == 2 and "pointing_accuracy" in saved["train"]["history"][0]
    assert any((tmp_path / "run" / "overlays" / "test").iterdir())
    model, config = load_checkpoint(report["train"]["checkpoint"])
    torch.manual_seed(0)  # the run built its model right after seeding 0: this is its initial state
    fresh = CaptionProbe(ProbeConfig(), config.backbone, [])
    assert config.method.name == "_caption_probe"
    assert not torch.equal(model.conv.weight, fresh.conv.weight)  # the checkpoint holds trained weights
    assert model.input_size == 64 and model.shift_average == 1


def test_eval_changes_only_how_a_checkpoint_reads_images(cache, tmp_path, capsys):
    from weakground.cli import main
    from weakground.errors import WeakgroundError

    config = _config()
    config.train.epochs = 1
    checkpoint = run_experiment(config, tmp_path / "run", progress=False)["train"]["checkpoint"]
    model, config = load_checkpoint(checkpoint, overrides=["eval.shift_average=3", "data.eval_resize=false"])
    assert model.shift_average == 3 and model.input_size is None
    for bad, message in (("method.params.dim=8", "settings are fixed except data.eval_resize, eval.shift_average"),
                         ("eval.shift_average=two", "expected int, got 'two'"),
                         ("eval.shift_average=0", "eval.shift_average must be >= 1")):
        with pytest.raises((WeakgroundError, ConfigError), match=message):
            load_checkpoint(checkpoint, overrides=[bad])
    data = f"flickr30k_entities:{scenes_root(config.data)}"
    report = tmp_path / "shifted.json"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", data, "--split", "val", "--no-progress",
                 "--set", "eval.shift_average=2", "--out", str(report)])
    assert code == 0 and json.loads(report.read_text())["n_queries"] > 0
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", data, "--set", "train.epochs=3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train.epochs=3" in err


def test_input_size_follows_the_config_and_resizes_like_training():
    from PIL import Image

    from weakground.methods import InferenceSettings

    assert inference_settings(_config(image_size=48)) == InferenceSettings(input_size=48, shift_average=1)
    assert inference_settings(_config(image_size=48, eval_resize=False)).input_size is None
    model = CaptionProbe(ProbeConfig(), _config().backbone, [])
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    assert model.prepare_images(tensor) is tensor  # no size set: as given
    model = CaptionProbe(ProbeConfig(), _config().backbone, [], InferenceSettings(input_size=48))
    resized = model.prepare_images(tensor)
    assert resized.shape == (1, 3, 48, 48)
    # the pixels training sees (PIL bilinear on uint8, load_caption_train_set), up to uint8 rounding
    trained = np.asarray(Image.fromarray(image).resize((48, 48), Image.BILINEAR)).astype(np.float32) / 255
    assert np.abs(resized[0].permute(1, 2, 0).numpy() - trained).max() < 1 / 255
    assert model.prepare_images(resized) is resized  # already the square: untouched
    assert model.heatmaps(tensor, ["a red circle"]).shape == (1, 1, 48, 48)


def test_label_trained_methods_read_images_at_their_own_size():
    from weakground.config import load_config
    from weakground.engine.inference import build_trained_method

    config = load_config("quickstart", ["data.image_size=48"])
    assert inference_settings(config).input_size is None
    assert build_trained_method(config, [str(d) for d in range(10)]).input_size is None


def test_a_method_without_a_joint_space_is_refused_before_any_file(cache, tmp_path):
    config = _config()
    config.method.name = "mcb_attention"
    with pytest.raises(ConfigError, match="does not learn from captions"):
        run_experiment(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
