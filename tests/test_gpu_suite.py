"""benchmarks/gpu_suite.py without a GPU: its CPU dry run goes through every preset and variant it names and
records what it claims; its FLOP count and device table on hand-checked cases (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def suite():
    return load_benchmark("gpu_suite")


class _LinearLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 20, bias=False)

    def loss(self, batch):
        return {"total": self.fc(batch["x"]).square().mean()}


def test_flop_count_of_a_linear_step_is_its_matrix_products(suite):
    # forward x[3,10] @ W^T[10,20]: 2*3*10*20 = 1200; backward: the weight's gradient, 1200 more (the input
    # needs none); with an input that needs its gradient too, a third product of the same size
    assert suite.count_flops(_LinearLoss(), {"x": torch.randn(3, 10)}) == 2400
    assert suite.count_flops(_LinearLoss(), {"x": torch.randn(3, 10, requires_grad=True)}) == 3600


def test_device_peak_is_none_off_cuda(suite):
    assert suite.device_peak(torch.device("cpu"), "bf16") is None


def test_unknown_variant_and_missing_cuda_are_one_line_errors(suite, capsys):
    with pytest.raises(SystemExit) as exc:
        suite.parse_args(["--variants", "fp8", "--dry-run"])
    assert exc.value.code == 2 and "unknown 'fp8'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            suite.parse_args([])
        assert "no CUDA device here" in capsys.readouterr().err


def test_dry_run_covers_every_preset_and_variant(suite, tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKGROUND_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gpu.json"
    assert suite.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["machine"]["device"] == "cpu"
    assert [p["preset"] for p in report["presets"]] == list(suite.PRESETS)
    for preset in report["presets"]:
        assert preset["flops_per_step"] > 0 and preset["batch_size"] == 4 and preset["data_batches_per_s"] > 0
        assert [r["variant"] for r in preset["runs"]] == ["fp32", "bf16"]
        for run in preset["runs"]:
            assert "error" not in run, (preset["preset"], run)
            assert run["steps"] == 2 and run["losses_finite"] and run["images_per_s"] > 0
            assert run["mfu"] is None and run["peak_memory_mib"] is None  # no device peak or CUDA memory on a CPU
