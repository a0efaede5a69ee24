"""The multi-task training loop.

Each optimizer step: for every micro-batch of the gradient accumulation, the task sampler picks a
task (every rank draws the same task: the samplers are seeded alike and see the same validation
losses), the task's batch iterator hands this rank its shard, the model computes the task losses
in one (DDP) forward, the loss weighting combines them, backward; then gradient clipping, AdamW,
the LR schedule. Every eval_every steps: evaluation on the validation split, the sampler updated
with the validation losses, the best checkpoint kept. Checkpoints hold everything to continue
bit-for-bit (checkpoint.py); Ctrl-C / SIGTERM finishes the current step, saves, and stops.
"""

import json
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from polyhead.train import checkpoint as ckpt
from polyhead.train.distributed import DistContext, any_rank, barrier, init_distributed
from polyhead.train.evaluate import evaluate, format_table, results_to_dict, selection_score
from polyhead.train.export import export_run
from polyhead.train.metrics import is_better
from polyhead.train.optim import build_optimizer, build_scheduler
from polyhead.train.plots import plot_losses
from polyhead.train.run_files import METRICS_FILE, PLOT_FILE, RESULTS_FILE, build_model, save_run_config
from polyhead.train.task_streams import TaskStreams


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once the checkpoint is on disk."""


class Trainer:
    def __init__(self, config, resume: bool = False, ctx: DistContext | None = None, show_progress: bool = True,
                 eval_batch_size: int = 32):
        self.config = config
        self.ctx = ctx or init_distributed()
        self.run_dir = Path(config.output_dir)
        self.resume = resume
        self.show_progress = show_progress and self.ctx.is_main
        self.eval_batch_size = eval_batch_size
        settings = config.train
        self.autocast_dtype = torch.bfloat16 if settings.uses_bfloat16 else None
        ckpt.seed_everything(settings.seed)  # the same heads on every rank, the same run on every resume
        self.model = build_model(config).to(self.ctx.device)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model.backbone_folder)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id or 0
        self.streams = TaskStreams(config, self.tokenizer, self.ctx, trainable_tasks(self.model))
        self.total_steps = self.streams.total_steps
        self.optimizer = build_optimizer(self.model.trainable_parameters(), settings.optimizer,
                                         self.streams.weighting_parameters())
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, settings.schedule)
        self.net = (DDP(self.model, find_unused_parameters=True) if self.ctx.is_distributed else self.model)
        self.teacher = self._build_teacher()
        self.step, self.history, self.best = 0, [], None  # best: (score, step)
        self.log_window: dict[str, list[float]] = {}  # task -> its step losses since the last log record
        self._stop_signal = None
        self.stop_at_step = None

    def _build_teacher(self):
        distill = self.config.distill
        if distill is None:
            return None
        from polyhead.train.distill import Teacher

        names = distill.tasks or [t.name for t in self.config.tasks if t.kind in ("classify", "generate")]
        return Teacher(distill.teacher, self.model.tasks, names), set(names)

    # ---- the loop -------------------------------------------------------------------------------

    def train(self, stop_at_step: int | None = None) -> dict:
        """Run to the configured number of steps; returns the final results ({split: {task: metrics}}).
        stop_at_step: save a checkpoint there and raise TrainingInterrupted, as Ctrl-C would (a
        time-boxed run continues later with --resume)."""
        self.stop_at_step = stop_at_step
        if self.resume:
            self._resume()
        elif ckpt.latest_checkpoint(self.run_dir) is not None:
            raise ValueError(f"{str(self.run_dir)!r} holds a previous run's checkpoints: continue it with --resume, "
                             "or train into another --output-dir")
        elif self.ctx.is_main:
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        if self.ctx.is_main:
            save_run_config(self.config, self.run_dir)
        counts = self.model.parameter_counts()
        self._log({"type": "start", "step": self.step, "parameters": counts, "mode": self.config.train.mode,
                   "world_size": self.ctx.world_size, "total_steps": self.total_steps})
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        try:
            self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self._finish(time.monotonic() - started, counts)

    def _loop(self) -> None:
        settings = self.config.train
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step",
                   disable=not self.show_progress, dynamic_ncols=True)
        running: dict[str, float] = {}
        self.net.train()
        with bar:
            while self.step < self.total_steps:
                losses = self.train_step()
                self.step += 1
                for task, loss in losses.items():
                    running[task] = loss if task not in running else 0.9 * running[task] + 0.1 * loss
                    self.log_window.setdefault(task, []).append(loss)
                if self.step % settings.log_every == 0 or self.step == self.total_steps:
                    # one record per task: its mean loss over the steps since the last record
                    for task, window in self.log_window.items():
                        self._log({"type": "train", "step": self.step, "task": task,
                                   "loss": sum(window) / len(window), "num_steps": len(window),
                                   "lr": self.scheduler.get_last_lr()[0]})
                    self.log_window = {}
                bar.set_postfix({t: f"{v:.3f}" for t, v in running.items()}, refresh=False)
                bar.update(1)
                if settings.eval_every and self.step % settings.eval_every == 0 and self.step < self.total_steps:
                    self._evaluate_and_keep_best()
                if any_rank(self.ctx, self._stop_signal is not None or self.step == self.stop_at_step):
                    self.save()
                    raise TrainingInterrupted(f"stopped at step {self.step}; checkpoint saved, continue with "
                                              "--resume")
                if settings.checkpoint_every and self.step % settings.checkpoint_every == 0:
                    self.save()

    def train_step(self) -> dict[str, float]:
        """One optimizer step over grad_accumulation micro-batches -> this step's loss per task."""
        accumulation = self.config.train.grad_accumulation
        self.optimizer.zero_grad(set_to_none=True)
        seen: dict[str, list[float]] = {}
        for micro in range(accumulation):
            batches = [b.to(self.ctx.device) for b in self.streams.next_batches()]
            syncing = micro == accumulation - 1 or not self.ctx.is_distributed
            with self.net.no_sync() if not syncing else nullcontext():
                with torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    outputs = self.net(batches)
                losses = {b.task: self._task_loss(b, out) for b, out in zip(batches, outputs)}
                total = self.streams.combine(losses, self.model) / accumulation
                total.backward()
            for task, loss in losses.items():
                seen.setdefault(task, []).append(loss.item())
        max_norm = self.config.train.optimizer.max_grad_norm
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        return {task: sum(v) / len(v) for task, v in seen.items()}

    def _task_loss(self, batch, out) -> torch.Tensor:
        if self.teacher is None or batch.task not in self.teacher[1]:
            return out.loss
        from polyhead.train.distill import distill_loss

        distill = self.config.distill
        teacher_logits = self.teacher[0].logits(batch.task, batch.input_ids, batch.attention_mask)
        return distill_loss(self.model.tasks[batch.task].kind, out.logits, teacher_logits, out.loss, batch.labels,
                            distill.temperature, distill.alpha)

    # ---- evaluation, checkpoints, the end ----------------------------------------------------------

    def evaluate(self, split: str = "validation") -> dict:
        data = self.streams.split(split)
        return evaluate(self.model, data, self.pad_token_id, self.eval_batch_size, self.autocast_dtype)

    def _evaluate_and_keep_best(self) -> dict | None:
        results = self.evaluate("validation")
        if not results:
            return None
        self.streams.update_sampler({task: r.metrics["loss"] for task, r in results.items()})
        self.streams.end_epoch()
        score = selection_score(results, self.config.train.best_metric)
        self._log({"type": "eval", "step": self.step, "split": "validation", "tasks": results_to_dict(results),
                   "score": score, "loss_weights": self.streams.loss_weights()})
        if is_better("score", score, None if self.best is None else self.best[0]):
            self.best = (score, self.step)
            self.save(best=True)
        return results

    def state_dict(self) -> dict:
        per_rank = {"rng": ckpt.rng_state(), "data": self.streams.data_state()}
        if self.ctx.is_distributed:
            gathered = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(gathered, per_rank)
        else:
            gathered = [per_rank]
        return {"step": self.step, "model": self.model.trainable_state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "streams": self.streams.state_dict(), "per_rank": gathered, "history": list(self.history),
                "best": self.best, "world_size": self.ctx.world_size, "log_window": dict(self.log_window)}

    def save(self, best: bool = False) -> None:
        state = self.state_dict()  # every rank takes part in the gather
        if self.ctx.is_main:
            ckpt.save_checkpoint(self.run_dir, state, best=best)
        barrier(self.ctx)

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.ctx.world_size:
            raise ValueError(f"the checkpoint was written by {state['world_size']} processes; resume it with "
                             f"--nproc {state['world_size']}, not {self.ctx.world_size}")
        self.model.load_trainable_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.streams.load_state_dict(state["streams"])
        mine = state["per_rank"][self.ctx.rank]
        self.streams.load_data_state(mine["data"])
        ckpt.set_rng_state(mine["rng"])
        self.step, self.history, self.best = state["step"], list(state["history"]), state["best"]
        self.log_window = {k: list(v) for k, v in state["log_window"].items()}

    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            raise ValueError(f"--resume: no checkpoint in {str(self.run_dir / ckpt.CHECKPOINT_DIR)!r}")
        self.load_state_dict(ckpt.load_checkpoint(path))
        if self.ctx.is_main:
            print(f"resumed from {path} at step {self.step}")
        if self.ctx.is_main:  # metrics.jsonl again holds exactly the history up to the checkpoint
            (self.run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in self.history))

    def _finish(self, wall_s: float, counts: dict) -> dict:
        last = None
        if self.best is None or self.best[1] != self.step:
            last = self._evaluate_and_keep_best()  # the last step is judged too
        self.save()  # the last step's state, before the best weights replace it in memory
        best_path = self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.BEST
        last_is_best = last is not None and self.best[1] == self.step
        if best_path.is_file() and not last_is_best:  # report and export the best checkpoint
            self.model.load_trainable_state_dict(ckpt.load_checkpoint(best_path)["model"])
        results = {"validation": last if last_is_best else self.evaluate("validation"),
                   "test": self.evaluate("test")}
        if self.ctx.is_main:
            for split, res in results.items():
                if res:
                    print(format_table(res, f"{split} (step {self.best[1] if self.best else self.step})"))
            extra = {"wall_s": round(wall_s, 1), "parameters": counts, "mode": self.config.train.mode,
                     "steps": self.step, "best": self.best}
            save_results_all(results, self.run_dir / RESULTS_FILE, extra)
            export_run(self.model, self.run_dir, self.config.backbone,
                       {t.name: t.prompt_template for t in self.config.tasks})
            plot_losses(self.history, self.run_dir / PLOT_FILE, title=f"{self.run_dir.name} ({self.config.train.mode})")
        barrier(self.ctx)
        return {split: results_to_dict(res) for split, res in results.items()}

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.ctx.is_main:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (again to abort)")


def trainable_tasks(model) -> list[str]:
    """Tasks with something to train: in mode heads a generate task has no head of its own."""
    return [n for n, t in model.tasks.items() if not (model.mode == "heads" and t.kind == "generate")]


def save_results_all(results: dict, path: Path, extra: dict) -> Path:
    splits = {split: results_to_dict(res) for split, res in results.items() if res}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**extra, "splits": splits}, indent=2))
    tmp.replace(path)
    return path


__all__ = ["Trainer", "TrainingInterrupted", "trainable_tasks"]
