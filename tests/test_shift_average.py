"""Test-time shift averaging (Grounder.grounding_maps, eval.shift_average): parity with a naive reference,
sub-stride peaks, the config path and old checkpoints."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from weakground.config import BackboneConfig, config_from_json, load_config, to_dict
from weakground.engine.inference import inference_settings
from weakground.errors import ConfigError
from weakground.methods.base import Grounder, InferenceSettings
from weakground.metrics import resize_heatmap


@dataclass
class _PoolConfig:
    stride: int = 8


class _CellMeans(Grounder):
    """A stand-in method: every phrase's map is the image's mean brightness per stride x stride cell."""

    name = "_cell_means"
    config_class = _PoolConfig

    def heatmaps(self, images, phrases, inference=None):
        images = self.prepare_images(images, inference)
        cells = F.avg_pool2d(images.mean(1, keepdim=True), self.config.stride)
        return cells.expand(-1, len(phrases), -1, -1)


def _model(n: int, stride: int = 8) -> _CellMeans:
    return _CellMeans(_PoolConfig(stride), BackboneConfig(in_channels=3), [], InferenceSettings(shift_average=n))


def _naive(model: _CellMeans, image: np.ndarray, n: int) -> np.ndarray:
    """Loops over copies and pixels with explicit index clamping (edge pixels repeated)."""
    _, height, width = image.shape
    stride = model.config.stride
    total, copies = np.zeros((height, width)), 0
    for i in range(n):
        for j in range(n):
            dy, dx = round(i * stride / n), round(j * stride / n)
            if (i, j) != (0, 0) and (dy, dx) == (0, 0):
                continue
            ys = np.clip(np.arange(height) - dy, 0, None)
            xs = np.clip(np.arange(width) - dx, 0, None)
            shifted = image[:, ys][:, :, xs]
            grid = model.heatmaps(torch.from_numpy(shifted)[None].float(), ["x"])
            full = resize_heatmap(grid, (height, width))[0, 0].numpy()
            back_y = np.clip(np.arange(height) + dy, None, height - 1)
            back_x = np.clip(np.arange(width) + dx, None, width - 1)
            total += full[back_y][:, back_x]
            copies += 1
    return total / copies


@pytest.mark.parametrize("n", [2, 3, 4])
def test_shift_average_matches_a_naive_reference(n):
    image = np.random.default_rng(n).random((3, 40, 48)).astype(np.float32)
    model = _model(n)
    out = model.grounding_maps(torch.from_numpy(image)[None], ["a", "b"])
    assert out.shape == (1, 2, 40, 48)
    assert torch.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_allclose(out[0, 0].numpy(), _naive(model, image, n), atol=1e-5)
    assert torch.equal(out[0, 0], out[0, 1])


def test_one_copy_is_the_method_s_own_heatmaps():
    images = torch.rand(2, 3, 32, 32)
    model = _model(1)
    assert torch.equal(model.grounding_maps(images, ["a"]), model.heatmaps(images, ["a"]))
    assert model.grounding_maps(images, []).shape[:2] == (2, 0)


def test_the_averaged_peak_falls_between_cell_centres():
    # A bright 2x2 spot straddling a cell border: one pass can only peak at a cell centre, 4 px away; the
    # averaged copies put the spot inside one cell or another and their mean peaks within a pixel of it.
    image = torch.zeros(1, 3, 64, 64)
    image[..., 31:33, 23:25] = 1.0  # centre (32, 24): on the border of the stride-8 cells
    spot = np.array([32.0, 24.0])

    def peak_distance(n):
        maps = resize_heatmap(_model(n).grounding_maps(image, ["spot"]), (64, 64))[0, 0]
        y, x = divmod(int(maps.argmax()), 64)
        return float(np.hypot(*(np.array([y + 0.5, x + 0.5]) - spot)))

    assert peak_distance(1) > 3.0
    assert peak_distance(4) <= 1.0


def test_per_call_settings_override_the_model_s_own():
    image = torch.rand(1, 3, 40, 48)
    one_pass, shifted = _model(1), _model(3)
    three = InferenceSettings(shift_average=3)
    torch.testing.assert_close(one_pass.grounding_maps(image, ["a"], three), shifted.grounding_maps(image, ["a"]))
    torch.testing.assert_close(shifted.grounding_maps(image, ["a"], InferenceSettings()),
                               one_pass.grounding_maps(image, ["a"]))
    assert shifted.shift_average == 3  # a call's settings never change the model's
    # input_size too, the shifted copies included: the maps are those of the image resized to the square
    square = InferenceSettings(input_size=32, shift_average=2)
    out = one_pass.grounding_maps(image, ["a"], square)
    assert out.shape == (1, 1, 32, 32)
    resized = one_pass.prepare_images(image, square)
    torch.testing.assert_close(out, _model(2).grounding_maps(resized, ["a"]))
    with pytest.raises(AttributeError):
        one_pass.shift_average = 2  # read-only: settings are given at construction or per call


def test_the_setting_comes_from_the_config_and_is_checked():
    config = load_config("multilevel_cpu", ["eval.shift_average=3"])
    assert inference_settings(config).shift_average == 3
    with pytest.raises(ConfigError, match="eval.shift_average must be >= 1"):
        inference_settings(load_config("multilevel_cpu", ["eval.shift_average=0"]))
    with pytest.raises(ConfigError, match=r"eval.shift_average must be >= 1 \(1: no shifted copies\), got 0"):
        InferenceSettings(shift_average=0)


def test_checkpoints_from_before_shift_averaging_load_with_one_pass():
    data = to_dict(load_config("multilevel_cpu"))
    del data["eval"]["shift_average"]
    assert config_from_json(json.dumps(data), "ckpt").eval.shift_average == 1
