"""Checkpoints: weights in safetensors (no code runs on load), the resolved config as JSON beside them.

A checkpoint is one file, ``<name>.safetensors``, whose metadata holds the JSON config, the method name, the
class names and the training state; ``<name>.json`` beside it is a human-readable copy of that metadata. For
``--resume`` the optimizer state travels inside the same file (tensors under :data:`OPTIMIZER_PREFIX`, their
layout in the metadata), so weights, optimizer and epoch are written by one ``os.replace`` and a kill can never
pair one epoch's weights with another's optimizer. (Checkpoints written before this kept the optimizer in a
``<name>.optim.safetensors`` sidecar; it is still read when the file holds none.) Every file is written to a
temporary name, fsynced and moved into place, and the folder fsynced after, so a crash never leaves half a file;
it gets the mode a plain ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.

The previous good checkpoint: :func:`save_checkpoint` with ``keep_previous`` (the trainer's ``<stage>_last``)
first moves the file it replaces to ``<name>.prev.safetensors``, then moves the new one into place, fsyncing the
folder after each rename. A kill at any point leaves ``last`` or ``prev`` (or both) complete:

    tmp written   -> last is the old good file (the temporary is deleted on resume)
    last -> prev  -> no last; prev is the newest good file
    tmp -> last   -> last is the new file, prev the one before it

:func:`load_for_resume` reads ``last``; when that cannot be read or loaded it falls back to ``prev`` with one
warning line on stderr and copies ``prev`` over ``last`` (so the next save keeps a good ``prev``); when both are
damaged it is one :class:`CheckpointError` naming both. :func:`refresh_json_copy` rewrites a ``.json`` copy a kill
left stale, so the copy always describes the file in place once a run is resumed.

Test hook: with the environment variable ``WEAKGROUND_KILL_AT=<point>:<n>`` the process SIGKILLs itself the
``n``-th time (counted per process, from 1) it reaches ``<point>`` in a checkpoint save; the points are
:data:`KILL_POINTS`. The variable is read once, at import; unset, each point costs one comparison.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weakground.errors import CheckpointError

FORMAT_VERSION = 1
# Optimizer tensors share the checkpoint file under this prefix; no module name starts with it.
OPTIMIZER_PREFIX = "__optimizer__."
KILL_ENV = "WEAKGROUND_KILL_AT"
# Where WEAKGROUND_KILL_AT can stop a save, in the order one save of `last` (then `best`) passes them.
KILL_POINTS = ("tmp-written",  # the new file is complete under its temporary name; nothing renamed yet
               "last-to-prev",  # the old last is now prev; no last for a moment
               "replaced",  # the new file is in place; the folder not yet fsynced
               "before-json",  # folder fsynced (and an old optimizer sidecar removed); the .json copy is stale
               "after-json",  # the save is complete
               "between-last-and-best")  # the trainer saved last and has not yet saved best (every epoch)
_KILL_AT = os.environ.get(KILL_ENV) or None
_kill_counts: dict[str, int] = {}


def kill_point(name: str) -> None:
    """The test hook: SIGKILL this process at its ``n``-th arrival at ``name`` when ``WEAKGROUND_KILL_AT`` asks."""
    if _KILL_AT is None:
        return
    point, _, nth = _KILL_AT.partition(":")
    if point != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] == int(nth or 1):
        sys.stdout.flush()
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def previous_path(path: Path) -> Path:
    """``<name>.prev.safetensors`` beside ``<name>.safetensors``: the checkpoint a ``keep_previous`` save replaced."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _umask() -> int:
    """The process umask. Linux shows it in /proc; elsewhere it can only be read by setting it, which is racy
    (a file another thread creates between the two calls gets umask 0), acceptable for a save's permissions."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0)
    os.umask(old)
    return old


def _write_temporary(path: Path, data: bytes) -> str:
    """``data`` in a fsynced temporary file beside ``path`` with a plain file's mode; returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            mode = 0o666 & ~_umask()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            else:  # pragma: no cover - Windows
                os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = _write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _replace_keeping_previous(path: Path, data: bytes, keep_previous: bool) -> None:
    """Move ``data`` into ``path`` through a temporary file; with ``keep_previous`` the file it replaces becomes
    :func:`previous_path` first. Each rename is followed by a folder fsync, so the order survives a power cut."""
    tmp = _write_temporary(path, data)
    try:
        kill_point("tmp-written")
        if keep_previous and path.is_file():
            os.replace(path, previous_path(path))
            _fsync_folder(path.parent)
            kill_point("last-to-prev")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    kill_point("replaced")
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



def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any], optimizer: Any = None,
                    keep_previous: bool = False) -> None:
    """Write ``model``'s weights (less its frozen pretrained modules) and ``meta`` (JSON-serialisable) to
    ``path`` (a ``.safetensors`` file); with ``keep_previous`` the file it replaces is kept as
    :func:`previous_path` (``--resume`` falls back to it when ``path`` is damaged)."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in checkpointed_state(model).items()}
    meta = {"format_version": FORMAT_VERSION, **meta}
    stored = dict(meta)
    if optimizer is not None:
        tensors, layout = _flatten_optimizer(optimizer.state_dict())
        state.update({OPTIMIZER_PREFIX + k: v for k, v in tensors.items()})
        stored["optimizer_layout"] = layout
    _replace_keeping_previous(path, save(state, metadata={"weakground": json.dumps(stored)}), keep_previous)
    # A sidecar from an older save would now describe another epoch: the file above is the whole truth.
    path.with_suffix(".optim.safetensors").unlink(missing_ok=True)
    kill_point("before-json")
    atomic_write_text(path.with_suffix(".json"), _json_copy(meta))
    kill_point("after-json")


def _json_copy(meta: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in meta.items() if k != "optimizer_layout"}, indent=2)


def stored_meta(path: Path) -> dict[str, Any] | None:
    """The weakground metadata of checkpoint ``path`` (tensors are not read); None when it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["weakground"])
    except Exception:  # noqa: BLE001 - any unreadable file is "no metadata" here; read_checkpoint says why
        return None
    return meta if isinstance(meta, dict) else None


def refresh_json_copy(path: Path) -> bool:
    """Rewrite ``<name>.json`` when it no longer describes checkpoint ``path`` (a kill between the two writes of
    a save leaves it one save behind); True when it was rewritten."""
    path = Path(path)
    meta = stored_meta(path) if path.is_file() else None
    if meta is None:
        return False
    text, copy = _json_copy(meta), path.with_suffix(".json")
    try:
        if copy.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(copy, text)
    return True


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
    there is none. A damaged or ill-fitting optimizer state is a one-line :class:`CheckpointError`."""
    path = Path(path)
    try:
        found = _read_optimizer_state(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, JSON and layout errors all mean "unreadable" here
        raise CheckpointError(f"{path}: its optimizer state cannot be read ({_first_line(exc)})") from None
    if found is None:
        return False
    try:
        optimizer.load_state_dict(found)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: its optimizer state does not fit this run ({_first_line(exc)})") from None
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_optimizer_state(path: Path) -> dict[str, Any] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        layout = json.loads((f.metadata() or {}).get("weakground", "{}")).get("optimizer_layout")
    if layout is not None:
        tensors = {k[len(OPTIMIZER_PREFIX):]: v for k, v in load_file(str(path)).items() if k.startswith(OPTIMIZER_PREFIX)}
    else:
        opt_path = path.with_suffix(".optim.safetensors")
        if not opt_path.is_file():
            return None
        tensors = load_file(str(opt_path))
        with safe_open(str(opt_path), "pt") as f:
            layout = json.loads(f.metadata()["layout"])
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entries in layout["scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    return {"state": state, "param_groups": layout["param_groups"]}


def _load_resumable(path: Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Load checkpoint ``path``'s weights and optimizer into ``model`` and ``optimizer``; returns its meta."""
    state, meta = read_checkpoint(path)
    train_state = meta.get("train_state")
    if not isinstance(train_state, dict) or not isinstance(train_state.get("epoch"), int):
        raise CheckpointError(f"{path}: checkpoint has no training state to resume from")
    load_weights(path, model, state)
    load_optimizer_state(path, optimizer)
    return meta


def _reason(path: Path, error: CheckpointError) -> str:
    """``error``'s message without the leading ``<path>: `` (the caller names the file itself)."""
    text = str(error)
    return text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text


def load_for_resume(path: Path, model: nn.Module, optimizer: Any) -> tuple[Path, dict[str, Any]]:
    """Load the ``keep_previous`` checkpoint ``path`` for ``--resume``, or, when it cannot be read or loaded, the
    previous one beside it (:func:`previous_path`), with one warning line on stderr; then ``prev`` is copied over
    ``path`` so the next save moves a good file to ``prev``. Returns (the file resumed from, its meta).

    Raises:
        CheckpointError: one line naming both files when neither can be resumed from.
    """
    path = Path(path)
    prev = previous_path(path)
    try:
        return path, _load_resumable(path, model, optimizer)
    except CheckpointError as error:
        if not prev.is_file():
            raise
        reason = _reason(path, error)
    try:
        meta = _load_resumable(prev, model, optimizer)
    except CheckpointError as error:
        raise CheckpointError(f"cannot resume: {path} ({reason}) and the previous checkpoint {prev} "
                              f"({_reason(prev, error)}) are both unusable") from None
    print(f"warning: {path}: {reason}; resuming from the previous checkpoint {prev} "
          f"(after epoch {meta['train_state']['epoch']})", file=sys.stderr, flush=True)
    atomic_write_bytes(path, prev.read_bytes())
    refresh_json_copy(path)
    return prev, meta
