"""The training loop shared by every method: progress bars, periodic evaluation, atomic checkpoints,
``--resume``, CSV logs (TensorBoard optional), seeded determinism, CPU or CUDA.

A model only has to provide ``loss(batch) -> {"total": ..., ...}`` and ``param_groups(lr, backbone_lr_mult)``;
the data arrive from a ``make_batches(epoch_rng)`` callable, so the loop knows nothing of methods or datasets.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from weakground.config import TrainConfig
from weakground.engine import distributed
from weakground.engine.checkpoint import (atomic_write_text, kill_point, load_for_resume, previous_path,
                                         refresh_json_copy, remove_stale_temporaries, save_checkpoint, stored_meta)
from weakground.errors import ConfigError

Batch = dict[str, Any]  # tensors (moved to the device) and, for caption methods, "captions": list[str]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and distributed.active():
        device = torch.device("cuda", distributed.local_rank())  # one GPU per process, as torchrun numbers them
    if device.type == "cuda":
        # TF32 matrix products: ~8x float32 throughput on Ampere/Hopper, well within this model's noise.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names over ``model.param_groups``, each group remembering its ``base_lr`` for
    the schedule."""
    groups = model.param_groups(config.lr, config.backbone_lr_mult)
    for g in groups:
        g["base_lr"] = g["lr"]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ConfigError(f"train.optimizer {config.optimizer!r}: expected 'sgd' or 'adam'")


class Trainer:
    """Runs one training stage of ``model`` and writes its outputs under ``run_dir``.

    Files: ``<stage>_log.csv`` (one row per logged step), ``<stage>_history.json`` (per-epoch evaluation),
    ``checkpoints/<stage>_last.safetensors`` (and ``<stage>_last.prev.safetensors``, the one it replaced, which
    ``--resume`` falls back to when ``last`` is damaged) and, with ``best_key``, ``checkpoints/<stage>_best.safetensors``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        run_dir: Path,
        meta: dict[str, Any],
        stage: str = "train",
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        best_key: str | None = None,
        progress: bool = True,
        log_every: int = 10,
    ) -> None:
        self.model = model
        self.config = config
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.stage = stage
        self.evaluate = evaluate
        self.best_key = best_key
        self.progress = progress
        self.log_every = log_every
        self.device = resolve_device(config.device)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.last_path = self.ckpt_dir / f"{stage}_last.safetensors"
        self.best_path = self.ckpt_dir / f"{stage}_best.safetensors"
        self.train_loss = model.loss  # model.loss, or its DDP wrapper while fit runs under torchrun

    def _optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.config)

    def fit(self, make_batches: Callable[[np.random.Generator], Iterable[Batch]], steps_per_epoch: int,
            resume: bool = False) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs; returns ``{"history": [...], "best": {...}}``.

        Epoch e draws its batches from ``np.random.default_rng([seed, e])`` and seeds torch with the same pair,
        so a resumed run sees exactly the data order and random draws an uninterrupted run would have seen.
        Under torchrun every rank runs this with the same global batches (each keeps its slice of the rows, see
        :mod:`weakground.engine.distributed`); only rank 0 validates, logs and writes files.
        """
        cfg = self.config
        distributed.check_batch_size(cfg.batch_size, f"{self.stage}.batch_size")
        self.model.to(self.device)
        self.train_loss = distributed.data_parallel(self.model, self.device)
        optimizer = self._optimizer()
        main = distributed.is_main()
        with distributed.main_first():  # rank 0 repairs what a kill left behind; the others then read it
            resumable = resume and (self.last_path.is_file() or previous_path(self.last_path).is_file())
            start_epoch, history, best = self._resume(optimizer) if resumable else (0, [], None)
        distributed.agree(start_epoch, f"{self.stage}: the epoch --resume continues after")
        log_path = self.run_dir / f"{self.stage}_log.csv"
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.last_path.parent)
            truncate_log(log_path, start_epoch)
        log = _StepLog(log_path if main else None, self._tensorboard() if main else None, self.stage)
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.time()
                batch_size = self._train_epoch(epoch, make_batches, steps_per_epoch, optimizer, log)
                record: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 2),
                                          "images_per_second": round(steps_per_epoch * batch_size / (time.time() - t0), 1)}
                self._validate(epoch, record, log, steps_per_epoch)
                history.append(record)
                summary = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "seconds")
                print(f"{self.stage} epoch {epoch + 1}/{cfg.epochs}: {summary}")
                if main:
                    best = self._save(epoch, record, history, best, optimizer)
        finally:
            log.close()
            self.train_loss = self.model.loss  # let the DDP wrapper go before the process group does
        if main:
            atomic_write_text(self.run_dir / f"{self.stage}_history.json",
                              json.dumps({"history": history, "best": best}, indent=2))
        return {"history": history, "best": best}

    def _resume(self, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
        """Load ``last`` (or, when it is damaged, the previous one) and repair what a kill mid-save left behind:
        a ``best`` the kill kept from being written, ``.json`` copies one save behind."""
        path, meta = load_for_resume(self.last_path, self.model, optimizer)
        train_state = meta["train_state"]
        start_epoch, best = train_state["epoch"], train_state.get("best")
        best_epoch = _train_epoch_of(self.best_path)
        if not distributed.is_main():  # rank 0 repaired the files before this rank read them
            return start_epoch, train_state.get("history", []), best
        if best is not None and best.get("epoch") == start_epoch and best_epoch != start_epoch:
            # Killed between `last` and `best`: the weights just loaded are the best epoch's; write them as best.
            save_checkpoint(self.best_path, self.model, {k: v for k, v in meta.items() if k != "optimizer_layout"})
        for checkpoint in (self.last_path, self.best_path):
            refresh_json_copy(checkpoint)
        print(f"resumed {self.stage} from {path} after epoch {start_epoch}")
        return start_epoch, train_state.get("history", []), best

    def _train_epoch(self, epoch: int, make_batches: Callable[[np.random.Generator], Iterable[Batch]],
                     steps_per_epoch: int, optimizer: torch.optim.Optimizer, log: "_StepLog") -> int:
        """One epoch of steps; returns the (global) batch size (for the throughput line)."""
        from tqdm.auto import tqdm

        cfg = self.config
        self.model.train()
        # Each rank its own torch stream (dropout masks), offset so that rank 0 draws what a single process would;
        # the batches come from the numpy generator, the same on every rank.
        torch.manual_seed(cfg.seed * 100_003 + epoch + 1_000_003 * distributed.rank())
        rng = np.random.default_rng([cfg.seed, epoch])
        bar = tqdm(make_batches(rng), total=steps_per_epoch, disable=not (self.progress and distributed.is_main()),
                   desc=f"{self.stage} {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        batch: Batch = {}
        for i, batch in enumerate(bar):
            step = epoch * steps_per_epoch + i
            factor = lr_factor(step, cfg.epochs * steps_per_epoch, cfg.warmup_steps, cfg.schedule)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            log.add(self._step(*distributed.shard(batch), step, optimizer))
            if (i + 1) % self.log_every == 0 or i + 1 == steps_per_epoch:
                running = log.flush({"epoch": epoch + 1, "step": step + 1, "lr": cfg.lr * factor}, step + 1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in running.items() if k in ("total", "accuracy")})
        return self._batch_size(batch)

    def _step(self, batch: Batch, share: float, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One optimisation step on this rank's ``share`` of the global batch; returns the global batch's losses."""
        cfg = self.config
        # Tensors go to the device; text (caption lists) stays as it is for the method's tokenizer.
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        use_amp = cfg.amp and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            losses = self.train_loss(batch)
        # Reduced before backward, so a non-finite loss on any rank stops every rank at the same step.
        values = distributed.weighted_mean({k: float(v.detach()) for k, v in losses.items()}, share)
        if not math.isfinite(values["total"]):
            raise FloatingPointError(f"{self.stage}: loss became {values['total']} at step {step}")
        total = losses["total"]
        # DDP averages gradients over ranks; scaling each rank's mean by its share of the rows times the number of
        # ranks makes that average the global batch's per-row mean even when a short last batch splits unevenly.
        scale = share * distributed.world_size()
        if scale != 1.0:
            total = total * scale
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        optimizer.step()
        return values

    def _validate(self, epoch: int, record: dict[str, Any], log: "_StepLog", steps_per_epoch: int) -> None:
        cfg = self.config
        last_epoch = epoch + 1 == cfg.epochs
        if self.evaluate is None or not (last_epoch or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)):
            return
        scores: dict[str, float] = {}
        if distributed.is_main():  # validation on rank 0 alone, while the others wait for its scores
            self.model.eval()
            with torch.no_grad():
                scores = self.evaluate(self.model)
        record.update(distributed.from_main(scores))  # every rank's history then reads as rank 0's
        log.scalars({f"val_{k}": v for k, v in record.items() if isinstance(v, (int, float))},
                    (epoch + 1) * steps_per_epoch)

    def _save(self, epoch: int, record: dict[str, Any], history: list[dict[str, Any]], best: dict[str, Any] | None,
              optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Checkpoint ``best`` (when this epoch improved on it) and ``last``; returns the best record."""
        improved = self.best_key is not None and self.best_key in record and (
            best is None or record[self.best_key] > best[self.best_key])
        if improved:
            best = dict(record)
        meta = {**self.meta, "stage": self.stage, "train_state": {"epoch": epoch + 1, "history": history, "best": best}}
        # `last` first: a kill between the two then leaves a resumable run whose best is one epoch stale at worst.
        save_checkpoint(self.last_path, self.model, meta, optimizer, keep_previous=True)
        kill_point("between-last-and-best")
        if improved:
            save_checkpoint(self.best_path, self.model, meta)
        return best

    @staticmethod
    def _batch_size(batch: Batch) -> int:
        return int(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])

    def _tensorboard(self) -> Any:
        if not self.config.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("tensorboard is not installed (pip install weakground[tensorboard]); logging to CSV only")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))


def truncate_log(path: Path, epochs_done: int) -> None:
    """Drop the step-log rows of epochs after ``epochs_done`` (a killed epoch's rows, which the resumed run
    writes again), so the log has each step once; a fresh run (``epochs_done`` 0) starts an empty log."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = list(rows[0]) if rows else []
    kept = [r for r in rows if epochs_done and str(r.get("epoch", "")).isdigit() and int(r["epoch"]) <= epochs_done]
    if len(kept) == len(rows) and epochs_done:
        return
    text = io.StringIO()
    if kept:
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    atomic_write_text(path, text.getvalue())  # a kill here keeps the whole old log, never half of it


def _train_epoch_of(path: Path) -> int | None:
    """The ``train_state.epoch`` recorded in checkpoint ``path``, None when it cannot be read."""
    meta = stored_meta(path) if Path(path).is_file() else None
    epoch = meta.get("train_state", {}).get("epoch") if meta else None
    return epoch if isinstance(epoch, int) else None


class _StepLog:
    """The step log: running loss means written to ``<stage>_log.csv`` every ``log_every`` steps (appended to on
    ``--resume``), and mirrored to TensorBoard when it is on. With no ``path`` (a rank other than 0) it only
    keeps the running means."""

    def __init__(self, path: Path | None, writer: Any, stage: str) -> None:
        self.file = open(path, "a", newline="") if path is not None else None
        self.writer, self.stage = writer, stage
        self.csv: csv.DictWriter | None = None
        self.running: dict[str, float] = {}
        self.n = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.running[k] = self.running.get(k, 0.0) + v
        self.n += 1

    def flush(self, head: dict[str, Any], step: int) -> dict[str, float]:
        """Write one row (``head`` then the means since the last row); returns those means."""
        means = {k: v / self.n for k, v in self.running.items()}
        row = {**head, **means}
        if self.file is None:
            self.running, self.n = {}, 0
            return means
        if self.csv is None:
            self.csv = csv.DictWriter(self.file, fieldnames=list(row), extrasaction="ignore")
            if self.file.tell() == 0:
                self.csv.writeheader()
        self.csv.writerow(row)
        self.file.flush()
        self.scalars(row, step)
        self.running, self.n = {}, 0
        return means

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{self.stage}/{k}", v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()
