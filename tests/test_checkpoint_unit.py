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


def test_files_get_a_plain_files_mode_not_mkstemps(tmp_path):
    import os

    from weakground.engine.checkpoint import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        model, optimizer = _stepped()
        save_checkpoint(tmp_path / "train_last.safetensors", model, {}, optimizer)
    finally:
        os.umask(old)
    for name in ("a.json", "train_last.safetensors", "train_last.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def _epoch_meta(epoch: int) -> dict:
    return {"train_state": {"epoch": epoch, "history": [], "best": None}}


def test_saving_last_keeps_the_file_it_replaces_as_prev(tmp_path):
    from weakground.engine.checkpoint import previous_path

    model, optimizer = _stepped()
    last = tmp_path / "train_last.safetensors"
    save_checkpoint(last, model, _epoch_meta(1), optimizer, keep_previous=True)
    assert not previous_path(last).exists()
    save_checkpoint(last, model, _epoch_meta(2), optimizer, keep_previous=True)
    assert previous_path(last).name == "train_last.prev.safetensors"
    assert read_checkpoint(previous_path(last))[1]["train_state"]["epoch"] == 1
    assert read_checkpoint(last)[1]["train_state"]["epoch"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_falls_back_to_prev_once_and_repairs_last(tmp_path, capsys):
    import json

    from weakground.engine.checkpoint import load_for_resume, previous_path

    model, optimizer = _stepped()
    last = tmp_path / "train_last.safetensors"
    for epoch in (1, 2):
        save_checkpoint(last, model, _epoch_meta(epoch), optimizer, keep_previous=True)
    assert load_for_resume(last, model, optimizer)[0] == last and capsys.readouterr().err == ""
    last.write_bytes(last.read_bytes()[:100])  # truncated
    used, meta = load_for_resume(last, nn.Linear(3, 2), torch.optim.Adam(nn.Linear(3, 2).parameters()))
    err = capsys.readouterr().err.splitlines()
    assert used == previous_path(last) and meta["train_state"]["epoch"] == 1
    assert len(err) == 1 and str(last) in err[0] and str(previous_path(last)) in err[0] and "after epoch 1" in err[0]
    # prev is copied over the damaged last (the next save then keeps a good prev), and its .json says so
    assert last.read_bytes() == previous_path(last).read_bytes()
    assert json.loads(last.with_suffix(".json").read_text())["train_state"]["epoch"] == 1


def test_resume_with_last_missing_uses_prev(tmp_path, capsys):
    from weakground.engine.checkpoint import load_for_resume, previous_path

    model, optimizer = _stepped()
    last = tmp_path / "train_last.safetensors"
    save_checkpoint(last, model, _epoch_meta(3), optimizer)
    last.rename(previous_path(last))  # killed between "last -> prev" and "tmp -> last"
    assert load_for_resume(last, model, optimizer)[1]["train_state"]["epoch"] == 3
    assert "checkpoint not found" in capsys.readouterr().err


def test_both_damaged_is_one_error_naming_both(tmp_path):
    import pytest

    from weakground.engine.checkpoint import load_for_resume, previous_path
    from weakground.errors import CheckpointError

    model, optimizer = _stepped()
    last = tmp_path / "train_last.safetensors"
    for epoch in (1, 2):
        save_checkpoint(last, model, _epoch_meta(epoch), optimizer, keep_previous=True)
    last.write_bytes(b"")
    previous_path(last).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError) as info:
        load_for_resume(last, model, optimizer)
    message = str(info.value)
    assert "\n" not in message and str(last) in message and str(previous_path(last)) in message
    # a damaged last with no prev to fall back to keeps its own one-line error
    previous_path(last).unlink()
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        load_for_resume(last, model, optimizer)


def test_a_stale_json_copy_is_rewritten(tmp_path):
    import json

    from weakground.engine.checkpoint import refresh_json_copy

    model, _ = _stepped()
    path = tmp_path / "train_best.safetensors"
    save_checkpoint(path, model, _epoch_meta(4))
    assert refresh_json_copy(path) is False
    path.with_suffix(".json").write_text(json.dumps(_epoch_meta(3)))  # a kill between the two writes
    assert refresh_json_copy(path) is True
    assert json.loads(path.with_suffix(".json").read_text())["train_state"]["epoch"] == 4


def test_the_kill_hook_is_inert_when_unset_and_names_real_points():
    from weakground.engine import checkpoint

    assert checkpoint._KILL_AT is None  # the suite never runs with the hook set
    for point in checkpoint.KILL_POINTS:
        checkpoint.kill_point(point)  # returns: nothing to kill
    import inspect

    source = inspect.getsource(checkpoint) + inspect.getsource(__import__("weakground.engine.trainer").engine.trainer)
    assert all(f'kill_point("{point}")' in source for point in checkpoint.KILL_POINTS)
