"""The captioning task end to end on tiny scenes: train, report, load, caption a photo; where boxes may enter."""

import json

import numpy as np
import pytest
import torch

from weakground.config import ExperimentConfig, from_dict
from weakground.engine.driver import run_experiment
from weakground.engine.tasks import captioning


def _config(**params):
    return from_dict(ExperimentConfig, {
        "name": "tiny_caption", "data": {"name": "scenes", "n_train": 24, "n_val": 4, "n_test": 6,
                                         "n_test_unseen": 0, "image_size": 64},
        "backbone": {"in_channels": 3},
        "method": {"name": "ss_attention", "params": {"regions": {"max_regions": 6}, "hidden": 16, "embed_dim": 8,
                                                       "attention_dim": 8, "beam": 2, "max_len": 10, **params}},
        "pretrain": {"enabled": False},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 0.003, "warmup_steps": 0,
                  "device": "cpu"}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("captioning")
    mp = pytest.MonkeyPatch()
    mp.setenv("WEAKGROUND_CACHE", str(tmp / "cache"))
    report = run_experiment(_config(), tmp / "run", progress=False, figure=False)
    yield report, tmp
    mp.undo()


def test_the_report_names_the_task_the_regions_and_the_box_use(trained):
    report, tmp = trained
    assert report["task"] == "captioning" and report["regions"] == {"source": "components", "oracle": False,
                                                                    "max_regions": 6, "level": "c5"}
    assert report["box_use"].startswith("L_gnd only")
    assert set(report["input"]) == {"train", "val", "test"}  # counted skips per split: none in clean scenes
    assert report["input"]["train"]["skipped_images_unreadable"] == 0 and report["train_captions_cut_to_max_len"] >= 0
    test = report["test"]
    assert {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} <= set(test["captions"])
    assert test["captions"]["SPICE"] is None and "SPICE" in test["captions"]["unavailable"]
    assert {"f1_all", "f1_loc"} <= set(test["grounding"]) and 0 <= test["grounding"]["f1_loc"] <= 1
    assert json.loads((tmp / "run" / "report.json").read_text())["test"]["n_images"] == 6


def test_a_trained_captioner_captions_a_photo_and_boxes_its_object_words(trained, capsys):
    from PIL import Image

    from weakground.cli import main
    from weakground.engine.inference import load_captioner

    report, tmp = trained
    checkpoint = report["train"]["checkpoint"]
    image = tmp / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    result = load_captioner(checkpoint).caption(image)
    assert isinstance(result.caption, str)
    for obj in result.objects:
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 < x2 <= 120 and 0 <= y1 < y2 <= 90 and obj["class"]
    assert main(["caption", str(image), "--checkpoint", checkpoint, "--json", "--out", str(tmp / "c.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["caption"] == result.caption and (tmp / "c.png").is_file()
    assert main(["eval", "--checkpoint", checkpoint, "--no-progress", "--out", str(tmp / "eval.json")]) == 0
    scored = json.loads((tmp / "eval.json").read_text())
    assert scored["n_images"] == 6 and scored["regions"]["oracle"] is False and "f1_loc" in scored["grounding"]
    assert main(["caption", str(image)]) == 2
    assert main(["locate", str(image), "a circle", "--checkpoint", checkpoint]) == 2
    err = capsys.readouterr().err
    assert "caption needs a captioner's --checkpoint" in err and "writes captions and grounds no phrase" in err


def test_boxes_reach_a_batch_only_as_l_gnd_targets():
    data = captioning.CaptioningData("spec", {"train": _split()}, [])
    data.samples = [(0, [1, 4, 2], np.array([0, 1, 0], np.float32))]
    (batch,) = captioning.caption_batches(data, 4, np.random.default_rng(0))
    assert set(batch) == {"features", "positions", "classes", "valid", "tokens", "grounding_targets"}
    data.samples = [(0, [1, 4, 2], None)]  # mu = 0: no target at all
    (batch,) = captioning.caption_batches(data, 4, np.random.default_rng(0))
    assert "grounding_targets" not in batch


def _split():
    from weakground.regions import Regions

    boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 64, 64]]])
    regions = Regions(boxes, torch.rand(1, 3, 8), torch.rand(1, 3, 5), torch.rand(1, 3, 1000),
                      torch.ones(1, 3, dtype=torch.bool))
    return captioning.CaptionSplit(["a"], np.zeros((1, 64, 64, 3), np.uint8), regions, [["a red circle"]],
                                   [{}], [[[("a red circle", "circle", [])]]])  # no box anywhere


def test_box_free_targets_come_from_the_grounder_not_from_boxes(monkeypatch):
    from weakground.methods.captioner import SSAttentionConfig
    from weakground.text.vocab import CaptionVocabulary

    vocab = CaptionVocabulary.build(["a red circle"], min_count=1)
    split = _split()
    boxes = SSAttentionConfig(grounding="boxes")
    (_, _, sigma), = captioning._samples(boxes, _config(), split, vocab, False)
    assert not sigma.any()  # the paper's mode finds no box to turn into a target
    monkeypatch.setattr(captioning, "_grounder_boxes", lambda *a: [[[[19.0, 21, 41, 39]]]])
    free = SSAttentionConfig(grounding="grounder", grounder_checkpoint="m.safetensors")
    (_, tokens, sigma), = captioning._samples(free, _config(), split, vocab, False)
    assert sigma.tolist() == [0.0, 1.0, 0.0] and tokens[0] == 1  # the grounder's box picked region 1
    none = SSAttentionConfig(mu=0.0, grounding="none")
    assert captioning._samples(none, _config(), split, vocab, False)[0][2] is None


def test_the_web_app_captions_with_a_captioner_and_says_so_without_one(trained):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from weakground.engine.inference import load, load_captioner
    from weakground.serve.app import LoadedModel, ServeSettings, create_app

    report, tmp = trained
    captioner = load_captioner(report["train"]["checkpoint"])
    image = (tmp / "scene.png").read_bytes() if (tmp / "scene.png").is_file() else _png()
    files = {"image": ("scene.png", image, "image/png")}
    with TestClient(create_app(ServeSettings(), loader=lambda s: LoadedModel(load("center"), captioner=captioner))) as c:
        r = c.post("/api/caption", files=files)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["method"] == "ss_attention" and isinstance(body["caption"], str)
        assert all(set(o) == {"word", "class", "box"} for o in body["objects"])
        assert c.post("/api/caption", files={"image": ("x.png", b"not an image", "image/png")}).status_code == 415
    with TestClient(create_app(ServeSettings(), loader=lambda s: LoadedModel(load("center")))) as c:
        r = c.post("/api/caption", files=files)
        assert r.status_code == 404 and "--caption-checkpoint" in r.json()["detail"]


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_bad_caption_input_is_counted_not_a_crash(tmp_path, monkeypatch):
    from PIL import Image

    from weakground.data import readers
    from weakground.data.types import Box, Caption, ImageRecord, Phrase, ReadResult
    from weakground.errors import WeakgroundError

    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "tiny.png")  # smaller than any region
    (tmp_path / "broken.png").write_bytes(b"not an image")
    man = Phrase("a man", [Box(0.0, 0.0, 1.0, 1.0)], ["people"])
    records = [
        ImageRecord("tiny", tmp_path / "tiny.png", 1, 1, [Caption("a man walks", [man]), Caption("  "),
                                                         Caption("nothing here at all")]),
        ImageRecord("no captions", tmp_path / "tiny.png", 1, 1, [Caption("")]),
        ImageRecord("unreadable", tmp_path / "broken.png", 1, 1, [Caption("a dog")]),
        ImageRecord("no file", None, 1, 1, [Caption("a dog")]),
        ImageRecord("unboxed", tmp_path / "tiny.png", 1, 1, [Caption("a sky")]),
    ]
    monkeypatch.setattr(readers, "read_dataset", lambda spec, split: ReadResult(list(records), []))
    split = captioning._read_split("fake:x", "test", 32, None, False)
    assert split.ids == ["tiny", "unboxed"] and split.images.shape == (2, 32, 32, 3)
    assert split.input_counts == {"skipped_images_no_caption": 1, "skipped_images_no_file": 1,
                                  "skipped_images_unreadable": 1,
                                  "skipped_empty_captions": 2, "captions_without_entity": 2,
                                  "images_without_boxed_object": 1}
    records[:] = records[1:4]
    with pytest.raises(WeakgroundError, match=r"no readable image with a caption \(1 without a caption, 1 without a file, 1 unre"):
        captioning._read_split("fake:x", "test", 32, None, False)
