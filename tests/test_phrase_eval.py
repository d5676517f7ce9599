"""The centre baseline method and the phrase-level evaluation harness (runner and ``weakground eval --data``).

Hand-checked numbers use the Flickr30K Entities fixture (tests/fixtures/flickr30k_entities). After the reader
(boxes converted to 0-based, exclusive ends; clipped to the image):

* image 100, 40x30 (W x H), centre pixel (20, 15) -> point (20.5, 15.5). Queries: "man" [0,0,10,20],
  "a red shirt" [2,4,8,12], "two cups" {[20,10,25,15], [29,10,40,16]}, "The performer" [0,0,10,20],
  "A guy" [0,0,10,20], "cups" = "two cups". No box contains the point ("two cups": y = 15.5 is not < 15).
* image 200, 50x40 -> point (25.5, 20.5). "A dog" and "The dog" [4,4,20,25], "a post" [49,39,50,40]: no hit.
* image 300 (train split), 30x30 -> point (15.5, 15.5). "A child" and "The kid" [1,1,15,28]: miss (x = 15.5 is
  not < 15); "a woman" [15,2,30,30]: hit.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from weakground.config import BackboneConfig
from weakground.data.readers import read_dataset
from weakground.data.scenes import SceneSpec, baseline_rates, write_scenes
from weakground.engine.phrase_eval import evaluate_phrase_grounding, format_phrase_report
from weakground.errors import ConfigError, WeakgroundError
from weakground.methods import create_method
from weakground.methods.center import CenterBaseline, CenterConfig
from weakground.metrics import PointingProtocol, center_baseline, random_baseline_accuracy
from weakground.registry import METHODS
from weakground.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "flickr30k_entities"
FLICKR = f"flickr30k_entities:{FIXTURE}"
REPORT_KEYS = ("pointing_accuracy", "n_queries", "protocol", "baselines", "attention_correctness", "by_type",
               "skipped")


def center(sigma: float = 0.25) -> CenterBaseline:
    return create_method("center", BackboneConfig(in_channels=3), [], {"sigma": sigma})


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root, SceneSpec(min_size=72, max_size=96, seed=1), 0, 0, 4, 2)
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------------ the method


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("size", [(30, 40), (31, 17), (1, 1)])
def test_center_heatmaps_shape_values_and_peak(channels, size):
    h, w = size
    maps = center().heatmaps(torch.rand(2, channels, h, w), ["a dog", "the red shirt", "x"])
    assert maps.shape == (2, 3, h, w) and maps.dtype == torch.float32
    assert bool((maps > 0).all()) and bool((maps <= 1).all())
    assert torch.equal(maps[0, 0], maps[1, 2])  # the pixels and the words play no part
    row, col = divmod(int(maps[0, 0].argmax()), w)
    assert (row, col) == (h // 2, w // 2)  # the pixel that contains the image centre (W / 2, H / 2)
    assert float(maps[0, 0, row, col]) == 1.0


def test_center_gaussian_values_and_sigma():
    maps = center(sigma=0.25).heatmaps(torch.zeros(1, 3, 30, 40), ["p"])[0, 0]
    # One pixel right of the peak: dx = 1, sigma_x = 0.25 * 40 = 10 -> exp(-1 / 200).
    assert float(maps[15, 21]) == pytest.approx(torch.exp(torch.tensor(-1 / 200)).item(), rel=1e-6)
    # Two pixels down: dy = 2, sigma_y = 0.25 * 30 = 7.5 -> exp(-4 / 112.5).
    assert float(maps[17, 20]) == pytest.approx(torch.exp(torch.tensor(-4 / 112.5)).item(), rel=1e-6)
    narrow = center(sigma=0.05).heatmaps(torch.zeros(1, 3, 30, 40), ["p"])[0, 0]
    assert int(narrow.argmax()) == int(maps.argmax())  # sigma changes the spread, never the point
    assert float(narrow.sum()) < float(maps.sum())


def test_center_is_registered_and_not_trainable():
    assert "center" in METHODS.names() and METHODS.get("center") is CenterBaseline
    assert CenterBaseline.trainable is False and CenterBaseline.has_joint_space is False
    model = center()
    with pytest.raises(WeakgroundError, match="cannot be trained"):
        model.loss({})
    with pytest.raises(WeakgroundError, match="cannot be trained"):
        model.param_groups(0.1, 1.0)
    for sigma in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="sigma"):
            CenterBaseline(CenterConfig(sigma=sigma))
    with pytest.raises(WeakgroundError, match=r"\[B, C, H, W\]"):
        model.heatmaps(torch.zeros(3, 8, 8), ["p"])


# ------------------------------------------------------------------------------------ hand-checked runner


@pytest.mark.parametrize("protocol, split, hits, evaluated", [
    (PointingProtocol(), "test", 0, 9),
    (PointingProtocol(), "all", 1, 12),  # + image 300: only "a woman" is hit
    (PointingProtocol(tolerance=1.0), "test", 2, 9),  # both "cups" queries: 0.5 px below [20,10,25,15]
    (PointingProtocol(box_rule="union"), "test", 2, 9),  # cups' union box [20,10,40,16] holds (20.5, 15.5)
    (PointingProtocol(min_area=0.05), "test", 0, 7),  # shirt 48/1200 and post 1/2000 are skipped
    (PointingProtocol(argmax_on="grid"), "all", 1, 12),  # the map is at image resolution: same point
])
def test_pointing_accuracy_hand_computed(protocol, split, hits, evaluated):
    report = evaluate_phrase_grounding(center(), FLICKR, split, protocol)
    assert report["n_hits"] == hits and report["n_evaluated"] == evaluated
    assert report["pointing_accuracy"] == pytest.approx(hits / evaluated)
    # On integer boxes the method points at the pixel containing the centre: the centre baseline's hits.
    assert report["baselines"]["center"] == pytest.approx(hits / evaluated)
    expected_protocol = {"tolerance": protocol.tolerance, "box_rule": protocol.box_rule,
                         "min_area": protocol.min_area, "argmax_on": protocol.argmax_on, "split": split,
                         "dataset": FLICKR, "format": "flickr30k_entities"}
    assert expected_protocol.items() <= report["protocol"].items()


def test_random_baseline_and_by_type_hand_computed():
    report = evaluate_phrase_grounding(center(), FLICKR, "test")
    # Share of the image each query's boxes cover (module docstring), averaged over the 9 queries.
    image_100 = (200 + 48 + (25 + 66) + 200 + 200 + (25 + 66)) / 1200
    image_200 = (336 + 336 + 1) / 2000
    assert report["baselines"]["random"] == pytest.approx((image_100 + image_200) / 9)
    val = evaluate_phrase_grounding(center(), FLICKR, "train")
    # "A child" [people], "The kid" [people, other], "a woman" [people]: only the woman is hit.
    assert val["by_type"]["people"]["count"] == 3
    assert val["by_type"]["people"]["pointing_accuracy"] == pytest.approx(1 / 3)
    assert val["by_type"]["other"]["count"] == 1 and val["by_type"]["other"]["pointing_accuracy"] == 0.0
    assert 0.0 < val["by_type"]["other"]["attention_correctness"] < 1.0
    # The reader's skips (by file:line) are carried into the report.
    reader = report["skipped"]["reader"]
    assert reader["reasons"]["unknown entity id"]["files"] == [f"{FIXTURE}/Sentences/100.txt:4"]
    assert reader["by_design"] == 3 and report["skipped"]["images"]["count"] == 0


# -------------------------------------------------------------------------------------- synthetic scenes


@pytest.mark.parametrize("fmt", ["flickr30k_entities", "coco"])
def test_report_on_scenes_has_every_key_and_sane_values(scenes, fmt):
    spec = f"{fmt}:{scenes}"
    report = evaluate_phrase_grounding(center(), spec, "test")
    for key in REPORT_KEYS:
        assert key in report
    assert "recall" not in report  # the centre baseline has no joint space
    assert report["n_images"] == 4 and report["n_queries"] > 0
    for value in (report["pointing_accuracy"], report["attention_correctness"], *report["baselines"].values()):
        assert 0.0 <= value <= 1.0
    assert all(0.0 <= t["pointing_accuracy"] <= 1.0 for t in report["by_type"].values() if t["count"])
    records = read_dataset(spec, "test").records
    phrases = [p for r in records for c in r.captions for p in c.phrases] + [o for r in records for o in r.objects]
    assert report["n_queries"] == len(phrases)
    boxes = [torch.tensor([b.as_list() for b in p.boxes]) for p in phrases]
    sizes = [(r.height, r.width) for r in records for p in [*(p for c in r.captions for p in c.phrases), *r.objects]]
    # Parity: the report's baselines are the metrics' functions on the same queries and protocol.
    assert report["baselines"]["random"] == pytest.approx(random_baseline_accuracy(boxes, sizes))
    assert report["baselines"]["center"] == pytest.approx(center_baseline(boxes, sizes))
    assert report["pointing_accuracy"] == pytest.approx(report["baselines"]["center"])
    if fmt == "flickr30k_entities":  # and the data module's own numpy baselines agree too
        rates = baseline_rates(records)
        assert report["baselines"]["random"] == pytest.approx(rates["random"])
        assert report["baselines"]["center"] == pytest.approx(rates["center"])


def test_unseen_split_and_max_images(scenes):
    report = evaluate_phrase_grounding(center(), f"flickr30k_entities:{scenes}", "test_unseen", max_images=1)
    assert report["n_images"] == 1 and report["protocol"]["split"] == "test_unseen"
    assert report["protocol"]["max_images"] == 1


class _LookupJointSpace(CenterBaseline):
    """A joint space that retrieves perfectly: images one-hot by width, captions one-hot by their image."""

    has_joint_space = True

    def __init__(self, caption_width: dict[str, int], widths: list[int]) -> None:
        super().__init__(CenterConfig())
        self.caption_width, self.widths = caption_width, widths

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(images.shape[0], len(self.widths))
        out[:, self.widths.index(images.shape[-1])] = 1.0
        return out

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), len(self.widths))
        for row, text in enumerate(texts):
            out[row, self.widths.index(self.caption_width[text])] = 1.0
        return out


def test_recall_block_for_joint_space_methods():
    records = read_dataset(FLICKR, "all").records
    lookup = {c.text: r.width for r in records for c in r.captions}
    model = _LookupJointSpace(lookup, sorted({r.width for r in records}))
    report = evaluate_phrase_grounding(model, FLICKR, "all")
    # 3 + 2 + 2 non-empty captions (100.txt:3 is empty and skipped by the reader), 3 images.
    t2i, i2t = report["recall"]["text_to_image"], report["recall"]["image_to_text"]
    assert t2i == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "n_queries": 7}
    assert i2t == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "n_queries": 3}
    assert "text_to_image R@1/5/10" in format_phrase_report(report)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def damaged(scenes, tmp_path) -> tuple[Path, Path, Path]:
    """A copy of the scenes' Flickr30K layout with one undecodable image and one of the wrong size."""
    root = tmp_path / "damaged"
    for sub in ("Images", "Sentences", "Annotations"):
        shutil.copytree(scenes / sub, root / sub)
    shutil.copyfile(scenes / "test.txt", root / "test.txt")
    ids = (root / "test.txt").read_text().split()
    broken, resized = root / "Images" / f"{ids[0]}.jpg", root / "Images" / f"{ids[2]}.jpg"
    broken.write_bytes(b"not a jpeg")
    from PIL import Image

    Image.new("RGB", (20, 20)).save(resized)
    return root, broken, resized


def test_unusable_images_are_skipped_and_counted(damaged):
    root, broken, resized = damaged
    report = evaluate_phrase_grounding(center(), f"flickr30k_entities:{root}", "test")
    images = report["skipped"]["images"]
    assert images["count"] == 2 and report["n_images"] == 2
    assert images["reasons"]["unreadable image"] == {"count": 1, "files": [str(broken)]}
    assert images["reasons"]["image size differs from annotation"] == {"count": 1, "files": [str(resized)]}


def test_strict_fails_on_the_first_image_problem(damaged):
    root, broken, _ = damaged
    with pytest.raises(WeakgroundError, match=f"^{broken}: cannot read image"):
        evaluate_phrase_grounding(center(), f"flickr30k_entities:{root}", "test", strict=True)


class _NeedsBigImages(CenterBaseline):
    min_image_side = 1000  # every scenes image is below this: the method rejects them all


def test_images_the_method_rejects_are_skipped_or_fatal_when_strict(scenes):
    spec = f"flickr30k_entities:{scenes}"
    report = evaluate_phrase_grounding(_NeedsBigImages(CenterConfig()), spec, "test")
    rejected = report["skipped"]["images"]["reasons"]["image rejected by the method"]
    first = read_dataset(spec, "test").records[0].path
    assert rejected["count"] == 4 and rejected["files"][0] == str(first)
    assert report["n_images"] == 0 and report["pointing_accuracy"] is None
    assert "pointing_accuracy      n/a" in format_phrase_report(report)
    with pytest.raises(WeakgroundError, match=f"^{first}: image size .* below the minimum side"):
        evaluate_phrase_grounding(_NeedsBigImages(CenterConfig()), spec, "test", strict=True)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_eval_writes_report_table_and_overlays(scenes, tmp_path, capsys):
    out, vis = tmp_path / "sub" / "center.json", tmp_path / "vis"
    code, stdout, err = run(capsys, "eval", "--method", "center", "--data", f"flickr30k_entities:{scenes}",
                            "--split", "test", "--tolerance", "2", "--union", "--min-area", "0.01",
                            "--visualize", vis, "--n-visualize", "3", "--no-progress", "--out", out)
    assert code == 0, err
    report = json.loads(out.read_text())
    for key in REPORT_KEYS:
        assert key in report
    assert report["protocol"]["tolerance"] == 2.0 and report["protocol"]["box_rule"] == "union"
    assert report["protocol"]["min_area"] == 0.01 and report["method"] == "center"
    assert "protocol: tolerance 2 px, union box, min area 0.01" in stdout
    assert f"center on flickr30k_entities:{scenes} (split test)" in stdout
    assert "center baseline" in stdout and "random baseline" in stdout
    pngs = sorted(vis.glob("*.png"))
    assert len(pngs) == 3 and all(p.stat().st_size > 1000 for p in pngs)
    assert report["visualizations"] == [str(p) for p in pngs]


def test_cli_eval_method_params_override(scenes, capsys):
    code, stdout, err = run(capsys, "eval", "--method", "center", "--set", "method.params.sigma=0.1", "--data",
                            f"flickr30k_entities:{scenes}", "--no-progress")
    assert code == 0, err
    assert "pointing_accuracy" in stdout


@pytest.fixture(scope="module")
def mcb_checkpoint(tmp_path_factory) -> Path:
    """An untrained mcb_attention checkpoint: enough to check which method a checkpoint holds."""
    from weakground.config import load_config
    from weakground.engine.checkpoint import save_checkpoint
    from weakground.engine.checkpoint import checkpoint_meta

    config = load_config("quickstart", ["backbone.widths=[4,8,8,8]", "backbone.blocks=[1,1,1,1]",
                                        "method.params.mcb_dim=32", "method.params.hidden=4"])
    names = [str(d) for d in range(10)]
    model = create_method(config.method.name, config.backbone, names, config.method.params)
    path = tmp_path_factory.mktemp("ckpt") / "mcb.safetensors"
    save_checkpoint(path, model, checkpoint_meta(config, names))
    return path


@pytest.mark.parametrize("args, message", [
    (["--method", "center", "--data", "flickr30k_entities:/no/such/dir"], "/no/such/dir"),
    (["--method", "center", "--data", "pascal:/tmp"], "unknown format 'pascal'"),
    (["--method", "center", "--data", "flickr30k_entities"], "expected FORMAT:PATH"),
    (["--method", "nope", "--data", FLICKR], "unknown method 'nope'"),
    (["--method", "mcb_attention", "--data", FLICKR], "learned method: give its --checkpoint"),
    (["--data", FLICKR], "needs --method NAME or --checkpoint"),
    (["--method", "center"], "--method needs --data"),
    ([], "eval needs --data"),
    (["--method", "center", "--data", FLICKR, "--split", "nosuch"], "nosuch"),
    (["--method", "center", "--data", FLICKR, "--tolerance", "-1"], "tolerance must be finite and >= 0"),
    (["--method", "center", "--data", FLICKR, "--min-area", "2"], "min_area must lie in [0, 1]"),
    (["--method", "center", "--data", FLICKR, "--max-images", "0"], "--max-images 0"),
    (["--method", "center", "--data", FLICKR, "--set", "train.epochs=3"], "only method.params"),
    (["--method", "center", "--data", FLICKR, "--set", "method.params.sigma=0"], "sigma"),
    (["--method", "center", "--data", FLICKR, "--strict"], "100.xml:38: box partly outside the image"),
])
def test_cli_eval_bad_input_is_one_line_and_exit_2(args, message, capsys):
    code, _, err = run(capsys, "eval", "--no-progress", *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("weakground: error: ") and message in err


def test_cli_eval_checkpoint_of_another_method_is_one_line(mcb_checkpoint, capsys):
    code, _, err = run(capsys, "eval", "--method", "center", "--checkpoint", mcb_checkpoint, "--data", FLICKR)
    assert code == 2 and err.count("\n") == 1
    assert f"{mcb_checkpoint}: checkpoint holds method 'mcb_attention', not --method 'center'" in err
    code, _, err = run(capsys, "eval", "--checkpoint", mcb_checkpoint, "--union")
    assert code == 2 and "--union applies to phrase grounding" in err
    code, _, err = run(capsys, "eval", "--checkpoint", mcb_checkpoint, "--split", "test_unseen")
    assert code == 2 and "multi-MNIST checkpoints are scored on val or test" in err


class _PaintedMaps(CenterBaseline):
    """Maps painted per phrase at the image's own size: an uneven person (a hot 2x2 patch inside a cool body), an
    exact shirt, two cups (the first hotter), an exact post, nothing for the dogs."""

    def heatmaps(self, images, phrases, inference=None):
        maps = torch.zeros(images.shape[0], len(phrases), *images.shape[-2:])
        for p, phrase in enumerate(phrases):
            m = maps[0, p]
            if phrase in ("man", "The performer", "A guy"):
                m[0:20, 0:10] = 0.3
                m[2:4, 2:4] = 1.0
            elif phrase == "a red shirt":
                m[4:12, 2:8] = 1.0
            elif phrase in ("two cups", "cups"):
                m[10:15, 20:25], m[10:16, 29:40] = 1.0, 0.8
            elif phrase == "a post" and m.shape == (40, 50):  # (presence asks other images' phrases too)
                m[39, 49] = 1.0
        return maps


def test_box_accuracy_per_rule_hand_computed():
    # 9 test queries. threshold@0.5: the person's box is its hot patch (IoU 4 / 200), the dogs get no box:
    # shirt, two cups x2, post = 4 / 9. instance: the person grows to its body (x3) = 7 / 9.
    report = evaluate_phrase_grounding(_PaintedMaps(CenterConfig()), FLICKR, "test")
    assert report["n_evaluated"] == 9
    assert report["box_accuracy"] == {"threshold@0.5": pytest.approx(4 / 9),
                                      "instance(grow=0.3,min_peak=0.5)": pytest.approx(7 / 9)}
    assert re.search(r"box acc, instance +0\.778  \(instance\(grow=0\.3,min_peak=0\.5\)\)", format_phrase_report(report))
