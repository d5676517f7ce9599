"""The training loop shared by every method: progress bars, periodic evaluation, atomic checkpoints,
``--resume``, CSV logs (TensorBoard optional), seeded determinism, CPU or CUDA.

A model only has to provide ``loss(batch) -> {"total": ..., ...}`` and ``param_groups(lr, backbone_lr_mult)``;
the data arrive from a ``make_batches(epoch_rng)`` callable, so the loop knows nothing of methods or datasets.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from weakground.config import TrainConfig
from weakground.engine.checkpoint import load_optimizer_state, load_weights, read_checkpoint, save_checkpoint
from weakground.errors import ConfigError

Batch = dict[str, Any]  # tensors (moved to the device) and, for caption methods, "captions": list[str]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
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


class Trainer:
    """Runs one training stage of ``model`` and writes its outputs under ``run_dir``.

    Files: ``<stage>_log.csv`` (one row per logged step), ``<stage>_history.json`` (per-epoch evaluation),
    ``checkpoints/<stage>_last.safetensors`` and, with ``best_key``, ``checkpoints/<stage>_best.safetensors``.
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

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = self.model.param_groups(self.config.lr, self.config.backbone_lr_mult)
        for g in groups:
            g["base_lr"] = g["lr"]
        if self.config.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.config.lr, weight_decay=self.config.weight_decay)
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.config.lr, momentum=self.config.momentum,
                                   weight_decay=self.config.weight_decay)
        raise ConfigError(f"train.optimizer {self.config.optimizer!r}: expected 'sgd' or 'adam'")

    def fit(self, make_batches: Callable[[np.random.Generator], Iterable[Batch]], steps_per_epoch: int,
            resume: bool = False) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs; returns ``{"history": [...], "best": {...}}``.

        Epoch e draws its batches from ``np.random.default_rng([seed, e])`` and seeds torch with the same pair,
        so a resumed run sees exactly the data order and random draws an uninterrupted run would have seen.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        self.model.to(self.device)
        optimizer = self._optimizer()
        start_epoch, history, best = 0, [], None
        if resume and self.last_path.is_file():
            state, meta = read_checkpoint(self.last_path)
            load_weights(self.last_path, self.model, state)
            load_optimizer_state(self.last_path, optimizer)
            start_epoch = meta["train_state"]["epoch"]
            history = meta["train_state"].get("history", [])
            best = meta["train_state"].get("best")
            print(f"resumed {self.stage} from {self.last_path} after epoch {start_epoch}")
        total_steps = cfg.epochs * steps_per_epoch
        use_amp = cfg.amp and self.device.type == "cuda"
        writer = self._tensorboard()
        log_path = self.run_dir / f"{self.stage}_log.csv"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a", newline="")
        log_writer = None
        try:
            for epoch in range(start_epoch, cfg.epochs):
                self.model.train()
                torch.manual_seed(cfg.seed * 100_003 + epoch)
                rng = np.random.default_rng([cfg.seed, epoch])
                running: dict[str, float] = {}
                n_running = 0
                t0 = time.time()
                bar = tqdm(make_batches(rng), total=steps_per_epoch, disable=not self.progress,
                           desc=f"{self.stage} {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
                for i, batch in enumerate(bar):
                    step = epoch * steps_per_epoch + i
                    factor = lr_factor(step, total_steps, cfg.warmup_steps, cfg.schedule)
                    for g in optimizer.param_groups:
                        g["lr"] = g["base_lr"] * factor
                    # Tensors go to the device; text (caption lists) stays as it is for the method's tokenizer.
                    batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                             for k, v in batch.items()}
                    with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                        losses = self.model.loss(batch)
                    total = losses["total"]
                    if not torch.isfinite(total):
                        raise FloatingPointError(f"{self.stage}: loss became {total.item()} at step {step}")
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    if cfg.grad_clip > 0:
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    values = {k: float(v.detach()) for k, v in losses.items()}
                    for k, v in values.items():
                        running[k] = running.get(k, 0.0) + v
                    n_running += 1
                    if (i + 1) % self.log_every == 0 or i + 1 == steps_per_epoch:
                        row = {"epoch": epoch + 1, "step": step + 1, "lr": cfg.lr * factor,
                               **{k: v / n_running for k, v in running.items()}}
                        if log_writer is None:
                            log_writer = csv.DictWriter(log_file, fieldnames=list(row), extrasaction="ignore")
                            if log_file.tell() == 0:
                                log_writer.writeheader()
                        log_writer.writerow(row)
                        log_file.flush()
                        if writer is not None:
                            for k, v in row.items():
                                writer.add_scalar(f"{self.stage}/{k}", v, step + 1)
                        bar.set_postfix({k: f"{v / n_running:.3f}" for k, v in running.items() if k in ("total", "accuracy")})
                        running, n_running = {}, 0
                record: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 2),
                                          "images_per_second": round(steps_per_epoch * self._batch_size(batch) / (time.time() - t0), 1)}
                last_epoch = epoch + 1 == cfg.epochs
                if self.evaluate is not None and (last_epoch or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)):
                    self.model.eval()
                    with torch.no_grad():
                        record.update(self.evaluate(self.model))
                    if writer is not None:
                        for k, v in record.items():
                            if isinstance(v, (int, float)):
                                writer.add_scalar(f"{self.stage}/val_{k}", v, (epoch + 1) * steps_per_epoch)
                history.append(record)
                summary = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "seconds")
                print(f"{self.stage} epoch {epoch + 1}/{cfg.epochs}: {summary}")
                improved = self.best_key is not None and self.best_key in record and (
                    best is None or record[self.best_key] > best[self.best_key])
                if improved:
                    best = dict(record)
                train_state = {"epoch": epoch + 1, "history": history, "best": best}
                meta = {**self.meta, "stage": self.stage, "train_state": train_state}
                if improved:
                    save_checkpoint(self.best_path, self.model, meta)
                save_checkpoint(self.last_path, self.model, meta, optimizer)
        finally:
            log_file.close()
            if writer is not None:
                writer.close()
        (self.run_dir / f"{self.stage}_history.json").write_text(json.dumps({"history": history, "best": best}, indent=2))
        return {"history": history, "best": best}

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
