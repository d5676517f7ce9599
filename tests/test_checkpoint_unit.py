"""A checkpoint is one unit: weights, optimizer state and epoch in one file, written by one rename (issue 30.2)."""

from __future__ import annotations

import torch
from torch import nn

from weakground.engine.checkpoint import (OPTIMIZER_PREFIX, load_optimizer_state, read_checkpoint,
                                         remove_stale_temporaries, save_checkpoint)
from weakground.engine.trainer import truncate_log


def _stepped() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    return model, optimizer


def test_optimizer_travels_inside_the_checkpoint_file(tmp_path):
    model, optimizer = _stepped()
    path = tmp_path / "train_last.safetensors"
    sidecar = path.with_suffix(".optim.safetensors")
    sidecar.write_bytes(b"an older epoch's optimizer")  # what a pre-unit save left beside it
    save_checkpoint(path, model, {"train_state": {"epoch": 3}}, optimizer)
    assert not sidecar.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["train_last.json",
                                                                                   "train_last.safetensors"]
    state, meta = read_checkpoint(path)
    assert set(state) == {"weight", "bias"} and meta["train_state"]["epoch"] == 3  # optimizer keys stripped
    assert "optimizer_layout" not in (tmp_path / "train_last.json").read_text()

    fresh = torch.optim.Adam(nn.Linear(3, 2).parameters(), lr=0.1)
    assert load_optimizer_state(path, fresh)
    restored, original = fresh.state_dict()["state"], optimizer.state_dict()["state"]
    for idx in original:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(restored[idx][key]), torch.as_tensor(original[idx][key]))


def test_checkpoint_without_optimizer_restores_nothing(tmp_path):
    model, _ = _stepped()
    path = tmp_path / "train_best.safetensors"
    save_checkpoint(path, model, {})
    from safetensors.torch import load_file

    assert not any(k.startswith(OPTIMIZER_PREFIX) for k in load_file(str(path)))
    assert load_optimizer_state(path, torch.optim.Adam(model.parameters())) is False


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".train_last.safetensors.abc.tmp").write_bytes(b"half")
    (tmp_path / "train_last.safetensors").write_bytes(b"kept")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["train_last.safetensors"]
    assert remove_stale_temporaries(tmp_path / "absent") == 0


def test_resumed_log_drops_the_killed_epochs_rows(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("epoch,step,lr,loss\n1,10,0.1,2.0\n1,20,0.1,1.5\n2,30,0.1,1.2\n2,40,0.1,1.1\n")
    truncate_log(log, 1)  # the run is resumed after epoch 1; epoch 2's rows will be written again
    assert log.read_text().splitlines() == ["epoch,step,lr,loss", "1,10,0.1,2.0", "1,20,0.1,1.5"]
    truncate_log(log, 0)  # a fresh run starts an empty log
    assert log.read_text() == ""
