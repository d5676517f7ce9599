"""Checkpoints: weights in safetensors (no code runs on load), the resolved config as JSON beside them.

A checkpoint is one file, ``<name>.safetensors``, whose metadata holds the JSON config, the method name, the
class names and the training state; ``<name>.json`` beside it is a human-readable copy of that metadata. For
``--resume`` the optimizer state travels inside the same file (tensors under :data:`OPTIMIZER_PREFIX`, their
layout in the metadata), so weights, optimizer and epoch are written by one ``os.replace`` and a kill can never
pair one epoch's weights with another's optimizer. (Checkpoints written before this kept the optimizer in a
``<name>.optim.safetensors`` sidecar; it is still read when the file holds none.) Every file is written to a
temporary name, fsynced and moved into place, and the folder fsynced after, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weakground.errors import CheckpointError

FORMAT_VERSION = 1
# Optimizer tensors share the checkpoint file under this prefix; no module name starts with it.
OPTIMIZER_PREFIX = "__optimizer__."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX keeps it in the folder's entry, not the file's data)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without folder handles: the rename is as durable as the OS makes it
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the ``.<name>.*.tmp`` files a killed save left in ``folder``; returns how many."""
    stale = list(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def checkpointed_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the modules named in ``model.frozen_modules``.

    Frozen pretrained encoders (EfficientNet, MiniLM) are rebuilt from their packages when the method is
    constructed, so writing their weights into every checkpoint would only add ~100 MB of copies.
    """
    prefixes = tuple(f"{name}." for name in getattr(model, "frozen_modules", ()))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}

def checkpoint_meta(config: Any, names: list[str]) -> dict[str, Any]:
    """What every checkpoint of a run records beside its weights: the method, its classes, the resolved config."""
    from weakground.version import __version__
    from weakground.config import to_dict

    return {"method": config.method.name, "class_names": names, "config": to_dict(config),
            "weakground_version": __version__}



def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any], optimizer: Any = None) -> None:
    """Write ``model``'s weights (less its frozen pretrained modules) and ``meta`` (JSON-serialisable) to
    ``path`` (a ``.safetensors`` file)."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in checkpointed_state(model).items()}
    meta = {"format_version": FORMAT_VERSION, **meta}
    stored = dict(meta)
    if optimizer is not None:
        tensors, layout = _flatten_optimizer(optimizer.state_dict())
        state.update({OPTIMIZER_PREFIX + k: v for k, v in tensors.items()})
        stored["optimizer_layout"] = layout
    atomic_write_bytes(path, save(state, metadata={"weakground": json.dumps(stored)}))
    # A sidecar from an older save would now describe another epoch: the file above is the whole truth.
    path.with_suffix(".optim.safetensors").unlink(missing_ok=True)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, meta); any problem is a one-line :class:`CheckpointError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = path.read_bytes()
        state = load(data)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    if "weakground" not in metadata:
        raise CheckpointError(f"{path}: safetensors file has no weakground metadata (not a weakground checkpoint)")
    try:
        meta = json.loads(metadata["weakground"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: checkpoint metadata is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        from weakground.version import __version__

        raise CheckpointError(f"{path}: checkpoint format version {version!r}; weakground {__version__} reads "
                              f"version {FORMAT_VERSION} only")
    return {k: v for k, v in state.items() if not k.startswith(OPTIMIZER_PREFIX)}, meta


def load_weights(path: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` strictly (frozen pretrained modules aside); mismatched keys or shapes are a
    :class:`CheckpointError`."""
    own = checkpointed_state(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"{path}: checkpoint does not match the model ({what}; {len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: checkpoint does not match the model ({k!r} is {tuple(v.shape)}, model has {tuple(own[k].shape)})"
            )
    for k, v in state.items():
        # NaN or Inf weights would answer every phrase with "peak nan" and exit 0; refuse them at the door.
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: checkpoint tensor {k!r} holds non-finite values (NaN or Inf)")
    model.load_state_dict(state, strict=not getattr(model, "frozen_modules", ()))


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def load_optimizer_state(path: Path, optimizer: Any) -> bool:
    """Restore the optimizer saved in checkpoint ``path`` (or, for older checkpoints, beside it); False when
    there is none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), "pt") as f:
        layout = json.loads((f.metadata() or {}).get("weakground", "{}")).get("optimizer_layout")
    if layout is not None:
        tensors = {k[len(OPTIMIZER_PREFIX):]: v for k, v in load_file(str(path)).items() if k.startswith(OPTIMIZER_PREFIX)}
    else:
        opt_path = path.with_suffix(".optim.safetensors")
        if not opt_path.is_file():
            return False
        tensors = load_file(str(opt_path))
        with safe_open(str(opt_path), "pt") as f:
            layout = json.loads(f.metadata()["layout"])
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entries in layout["scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": layout["param_groups"]})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: its optimizer state does not fit this run ({exc})") from None
    return True
