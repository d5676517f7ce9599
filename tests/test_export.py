"""ONNX export (issue 32): onnxruntime's maps match PyTorch's, phrase count and image size are dynamic, the sidecar
describes the graph, and the CLI's errors are one line."""

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from weakground.cli import main  # noqa: E402
from weakground.engine.inference import load  # noqa: E402
from weakground.export import OnnxGrounder, export_onnx, sidecar_path  # noqa: E402

# Maps lie in [0, 1] (bridge) or are small cosines (dsve_loc); float32 graphs agree far tighter (~2e-6 seen).
TOLERANCE = 1e-4
DSVE = Path(__file__).parent / "fixtures" / "legacy_checkpoints" / "dsve_loc.safetensors"


@pytest.fixture(scope="module")
def bridge_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "bridge.onnx"
    assert main(["export", "--method", "bridge", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def bridge_pair(bridge_onnx):
    return load("bridge"), OnnxGrounder(bridge_onnx)


def _image(h, w, seed=0, batch=1):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("phrases", [["a dog"], ["a dog", "the red car", "a tall tree"]])
def test_bridge_onnx_matches_pytorch_for_any_phrase_count(bridge_pair, phrases):
    predictor, grounder = bridge_pair
    images = _image(240, 320)
    expected, got = predictor.heatmaps(images, phrases), grounder.heatmaps(images, phrases)
    assert got.shape == expected.shape == (1, len(phrases), 40, 56)
    assert (got - expected).abs().max().item() < TOLERANCE


def test_bridge_onnx_dynamic_image_size_batch_and_face_prior(bridge_pair):
    predictor, grounder = bridge_pair
    images = _image(300, 200, seed=1, batch=2)  # portrait, two images: other H, W and batch than traced
    phrases = ["her face", "a cup"]  # a head part: the face step (detector, then prior) runs in Python after the graph
    expected, got = predictor.heatmaps(images, phrases), grounder.heatmaps(images, phrases)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < TOLERANCE


def test_sidecar_describes_the_graph(bridge_onnx):
    import onnx

    meta = json.loads(sidecar_path(bridge_onnx).read_text())
    assert meta["method"] == "bridge" and meta["source"] == "bridge" and meta["image_size"] == 448
    assert meta["inputs"]["phrases"]["shape"] == ["phrases", 1000]
    assert meta["inputs"]["images"]["shape"] == ["batch", 3, "height", "width"]
    from weakground.version import __version__

    assert meta["weakground_version"] == __version__
    graph = onnx.load(str(bridge_onnx)).graph
    assert [i.name for i in graph.input] == ["images", "phrases"] and [o.name for o in graph.output] == ["maps"]
    assert graph.input[1].type.tensor_type.shape.dim[0].dim_param == "phrases"


def test_trained_dsve_loc_checkpoint_exports_and_matches(tmp_path):
    out = tmp_path / "dsve.onnx"
    meta = export_onnx(DSVE, out)
    assert meta["method"] == "dsve_loc" and meta["inputs"]["phrases"]["shape"] == ["phrases", 16]
    predictor, grounder = load(DSVE), OnnxGrounder(out)
    for phrases in (["a red circle"], ["a red circle", "the blue square", "a green thing"]):
        images = _image(80, 120, seed=2)
        expected, got = predictor.heatmaps(images, phrases), grounder.heatmaps(images, phrases)
        assert got.shape == expected.shape and (got - expected).abs().max().item() < TOLERANCE


def test_shift_averaged_checkpoint_runs_the_graph_on_shifted_copies(tmp_path):
    from weakground.methods import InferenceSettings

    out = tmp_path / "dsve.onnx"
    export_onnx(DSVE, out)
    predictor, grounder = load(DSVE), OnnxGrounder(out)
    settings = InferenceSettings(input_size=64, shift_average=2)  # eval.shift_average=2 (the presets use 3)
    predictor.model.inference = grounder.model.inference = settings
    images, phrases = _image(70, 90, seed=3), ["a red circle", "the blue square"]
    expected, got = predictor.heatmaps(images, phrases), grounder.heatmaps(images, phrases)
    assert got.shape == expected.shape == (1, 2, 64, 64)
    assert (got - expected).abs().max().item() < TOLERANCE


def _error_line(capsys, argv):
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weakground: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_errors_are_one_line(capsys, tmp_path):
    out = str(tmp_path / "m.onnx")
    assert "no such file" in _error_line(capsys, ["--checkpoint", str(tmp_path / "missing.safetensors"),
                                                  "--out", out])
    assert "unknown method 'nope'" in _error_line(capsys, ["--method", "nope", "--out", out])
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert "does not exist" in _error_line(capsys, ["--method", "bridge", "--out", str(blocker / "m.onnx")])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root writes through permissions: /proc refuses new files to everyone
    folder = Path("/proc") if os.geteuid() == 0 else locked
    try:
        assert "cannot write in" in _error_line(capsys, ["--method", "bridge", "--out", str(folder / "m.onnx")])
    finally:
        locked.chmod(0o700)
    assert "ending in .onnx" in _error_line(capsys, ["--method", "bridge", "--out", str(tmp_path / "m.txt")])
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("argv, why", [
    (["--method", "center"], "method 'center' cannot be exported to ONNX: it has no network"),
    (["--checkpoint", str(DSVE.parent / "multilevel.safetensors")], "method 'multilevel' cannot be exported"),
])
def test_methods_without_a_graph_wrapper_are_refused_in_one_line(capsys, tmp_path, argv, why):
    assert why in _error_line(capsys, [*argv, "--out", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()
