"""The free multi-MNIST layout as the benchmark default (issue 31): presets, the --layout option, the box ceilings."""

import numpy as np
import pytest

from benchmark_scripts import load_benchmark
from weakground.config import load_config
from weakground.data.multimnist import MultiMnistSet, MultiMnistSpec, _iou
from weakground.data.splits import build_splits

mm = load_benchmark("multimnist")


def test_layout_option_defaults_to_free_and_keeps_the_grid_rows_overrides():
    parser = mm.build_parser()
    assert parser.parse_args(["table2"]).layout == "free"
    assert parser.parse_args(["table2", "--layout", "grid"]).layout == "grid"
    with pytest.raises(SystemExit):
        parser.parse_args(["table2", "--layout", "scattered"])
    # The committed grid rows were trained with exactly these overrides; their keys stay "2x2"/"3x3".
    assert mm.layout_overrides("grid", 3) == ["data.grid=3"]
    assert (mm.row_key("grid", 2), mm.row_key("free", 2), mm.row_key("free", 3)) == ("2x2", "2x2_free", "3x3_free")
    assert mm.data_changes("free", 3) == {"layout": "free", "canvas": 84, "min_digits": 1, "max_digits": 9,
                                          "max_overlap": 0.2, "noise_std": 0.1}
    with pytest.raises(ValueError, match="layout"):
        mm.layout_overrides("scattered", 2)


@pytest.mark.parametrize("scale", ["cpu", "cpu_erasing"])
def test_free_presets_are_the_grid_presets_on_the_benchmarks_free_scenes(scale):
    free = load_config(f"{scale}_free")
    bench = load_config(scale, mm.layout_overrides("free", 2))
    assert free.data == bench.data and free.data.layout == "free" and free.data.canvas == 56
    assert (free.method, free.backbone, free.train, free.pretrain, free.eval) == \
        (bench.method, bench.backbone, bench.train, bench.pretrain, bench.eval)
    assert load_config(scale).data.layout == "grid"  # the existing presets still make grids


def test_free_preset_scenes_overlap_are_noisy_and_hold_one_to_four_digits():
    config = load_config("cpu_erasing_free", ["data.n_test=300"])
    test = build_splits(config.data, ("test",))["test"]
    assert test.images.shape == (300, 56, 56)
    counts = np.array([len(labels) for labels in test.labels])
    assert set(counts.tolist()) == {1, 2, 3, 4}
    pair_ious = np.concatenate([_iou(b, b)[np.triu_indices(len(b), 1)] for b in test.boxes if len(b) > 1])
    assert (pair_ious > 0).mean() > 0.3 and pair_ious.max() <= 0.2 + 1e-6  # digits overlap, up to the cap
    # Noise: far from every digit's patch the pixels are not all 0, as they would be without noise.
    corner_free = [i for i in range(300) if (test.patch_boxes[i][:, :2] >= 8).all()]
    assert corner_free and np.mean([test.images[i, :8, :8].astype(float).mean() for i in corner_free]) > 3


def _two_digit_set(labels, x2):
    """One 56x28 image holding two 28x28 patches side by side (``x2``: the second one's left edge), with tight ink
    boxes inside them."""
    patches = np.array([[0, 0, 28, 28], [x2, 0, x2 + 28, 28]], dtype=np.float32)
    ink = patches + np.array([6, 4, -6, -4], dtype=np.float32)
    spec = MultiMnistSpec(layout="free", canvas=max(56, x2 + 28))
    size = spec.canvas
    return MultiMnistSet(images=np.zeros((1, size, size), np.uint8), boxes=[ink],
                         labels=[np.array(labels, dtype=np.int64)], spec=spec, pool="test", patch_boxes=[patches])


def test_oracle_ceiling_loses_only_where_same_class_boxes_touch():
    # Two different digits: each map has its own box, so a perfect map scores 100 against either kind.
    apart = _two_digit_set([3, 5], 28)
    assert mm.oracle_ceiling(apart, "patch")["ap50"] == 100.0 and mm.oracle_ceiling(apart, "ink")["ap50"] == 100.0
    # Two 3s in touching cells: the patch-filling map is one component, one 56x28 box, IoU 0.5 with one cell and
    # the other cell missed (recall 1/2), while the ink boxes, 12 px apart, stay separate.
    touching = _two_digit_set([3, 3], 28)
    patch = mm.oracle_ceiling(touching, "patch")
    assert patch["ap50"] == pytest.approx(50.0) and patch["ap30"] == pytest.approx(50.0)
    assert mm.oracle_ceiling(touching, "ink")["ap50"] == 100.0
    maps = mm.oracle_maps(touching, 0, "patch")
    assert maps.shape == (10, 56, 56) and maps[3].sum() == 2 * 28 * 28 and maps[5].sum() == 0


def test_table2_prints_ink_boxes_first_then_patch_boxes(capsys):
    row = {"ap30": 1.0, "ap40": 2.0, "ap50": 3.0, "map": 2.0, "avg_iou": 4.0}
    entry = {"2x2_free": {**row, "full_test": dict(row, ap50=5.0), "patch_boxes": dict(row, ap50=6.0)}}
    args = mm.build_parser().parse_args(["table2", "--scale", "cpu_erasing"])
    mm._print_table2(args, entry, ["2x2_free"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2x2 | ours")]
    assert [line.split(" | ")[1] for line in lines] == [
        "ours (cpu_erasing, free layout), ink boxes", "ours (cpu_erasing, free layout, test images of 4 digits), ink boxes",
        "ours (cpu_erasing, free layout), patch boxes"]
    assert [line.split(" | ")[4] for line in lines] == ["3.00", "5.00", "6.00"]
