"""The text recipe's Trainer callbacks: progress, checkpoints, stop requests, best weights,
early stopping and the time budget.

``TrainingLoop`` is a duck-typed ``TrainerCallback`` (the Trainer calls ``on_*`` methods by
name), so this module imports no transformers at import time.

Best weights: at every evaluation the validation metric the recipe chose (``macro_f1``; ties go
to the lower loss) is compared with the best so far and a CPU copy of a better model is kept;
``restore_best`` loads it when training ends. Checkpoints carry it (``best.json`` and, when it
is not the checkpoint's own, ``best-model.safetensors``), with the seconds trained so far.

Time budget: before each step the loop estimates whether one more step still fits in
``budget_s`` (counted over every attempt of the job, from the checkpoints); if not, training
stops there, is evaluated once more and keeps the best weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tidal.training import checkpoints
from tidal.training.recipes.base import TrainContext

BEST_FILE = "best-model.safetensors"  # inside a checkpoint: the best weights, if not its own
BEST_META = "best.json"  # inside a checkpoint: metric, step of the best evaluation, seconds
TRAINING_ARGS = "training_args.bin"


def early_stopping(patience: int) -> Any:
    from transformers import EarlyStoppingCallback

    class EarlyStopping(EarlyStoppingCallback):
        """Transformers' early stopping, without its warning about load_best_model_at_end:
        the best weights are kept by ``TrainingLoop`` (the Trainer's own way needs its
        checkpoints, which Tidal writes elsewhere)."""

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            return None

    return EarlyStopping(early_stopping_patience=patience)


class TrainingLoop:
    """The Trainer callback of Tidal's loop (see the module docstring)."""

    def __init__(
        self,
        ctx: TrainContext,
        folder: Path | None,
        policy: dict[str, Any],
        progress_every_s: float,
        resume: Path | None,
        budget_s: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.folder = folder
        self.every_steps = int(policy["every_steps"])
        self.every_s = float(policy["every_s"])
        # at least two on disk: the executor may still be uploading the one before the newest
        self.keep = max(int(policy["keep"]), 2)
        self.progress_every_s = progress_every_s
        self.budget_s = budget_s
        self.stopped = False  # asked to stop (SIGTERM)
        self.out_of_time = False  # the time budget ended training
        self.evaluations: list[dict[str, float]] = []
        self.loss: float | None = None
        self.save_seconds: list[float] = []
        self.last_checkpoint: Path | None = resume
        self.best: tuple[tuple[float, float], int] | None = None  # ((metric, -loss), step)
        self.best_weights: dict[str, Any] | None = None
        self.spent_before = 0.0  # seconds trained by earlier attempts
        self._resume = resume
        self._started = self._last_emit = self._save_asked = 0.0
        self._first_step = 0
        self._last_save = (0, 0.0)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):  # the events this loop does not need
            return _ignore
        raise AttributeError(name)

    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self._started

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        self._started = now
        self._first_step = state.global_step
        self._last_save = (state.global_step, now)
        meta = self._resume / BEST_META if self._resume is not None else None
        if meta is None or not meta.is_file():
            return
        saved = json.loads(meta.read_text(encoding="utf-8"))
        self.spent_before = float(saved.get("elapsed_s", 0.0))
        if "step" not in saved:
            return
        score = saved.get("score", saved.get("accuracy"))  # "accuracy": checkpoints before 0.x
        self.best = ((float(score), -float(saved["loss"])), int(saved["step"]))
        weights = meta.with_name(BEST_FILE)
        if weights.is_file():
            from safetensors.torch import load_file

            self.best_weights = load_file(str(weights))
        else:  # the best weights are the checkpoint's own, which the Trainer just loaded
            self.best_weights = _snapshot(kwargs["model"])

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step, total, now = state.global_step, state.max_steps, time.monotonic()
        per_step = (now - self._started) / max(step - self._first_step, 1)
        if step < total:  # the last step needs no checkpoint: the model is saved next
            if self.ctx.stop_requested():
                self.stopped = True
                control.should_training_stop = True
                control.should_save = self.folder is not None
            elif self.budget_s is not None and self.elapsed() + per_step > self.budget_s:
                self.out_of_time = True
                control.should_training_stop = True
                # judge the weights reached so far too; the best of all is kept
                control.should_evaluate = args.metric_for_best_model is not None
                self.ctx.report(
                    {
                        "event": "budget",
                        "step": step,
                        "total": total,
                        "elapsed_s": round(self.elapsed(), 1),
                        "budget_s": self.budget_s,
                    }
                )
            elif self.folder is not None and (
                step - self._last_save[0] >= self.every_steps
                or now - self._last_save[1] >= self.every_s
            ):
                control.should_save = True
            if control.should_save:
                self._save_asked = now
        if now - self._last_emit >= self.progress_every_s or step >= total or self.stopped:
            self._last_emit = now
            event: dict[str, float] = {"eta_s": round((total - step) * per_step, 1)}
            if self.loss is not None:
                event["loss"] = round(self.loss, 5)
            self.ctx.progress(step, total, **event)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped:  # no evaluation in the grace period of a stop request
            control.should_evaluate = False

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, float] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        name = args.metric_for_best_model
        value = (metrics or {}).get(f"eval_{name}")
        if value is None or model is None:
            return
        loss = float((metrics or {}).get("eval_loss", 0.0))
        self.evaluations.append({"step": state.global_step, name: float(value), "loss": loss})
        self.ctx.report({"event": "evaluation", **self.evaluations[-1]})
        # ties (frequent on small sets) go to the lower loss
        score = (float(value), -loss)
        if self.best is None or score > self.best[0]:
            self.best = (score, state.global_step)
            self.best_weights = _snapshot(model)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.folder is None:
            return
        step = state.global_step
        staged = Path(args.output_dir) / checkpoints.name_of(step)
        # the Trainer's pickle of its arguments: never loaded on resume, so never kept (every
        # pickle-format file left must load with weights_only=True, see checkpoints)
        (staged / TRAINING_ARGS).unlink(missing_ok=True)
        meta: dict[str, Any] = {"elapsed_s": round(self.elapsed(), 3)}
        if self.best is not None and self.best_weights is not None:
            (score, loss), step_of_best = self.best
            meta |= {"score": score, "loss": -loss, "step": step_of_best}
            if step_of_best != step:
                from safetensors.torch import save_file

                save_file(self.best_weights, str(staged / BEST_FILE))
        (staged / BEST_META).write_text(json.dumps(meta), encoding="utf-8")
        self.last_checkpoint = checkpoints.seal(staged, self.folder, step)
        checkpoints.prune(self.folder, self.keep)
        now = time.monotonic()
        seconds = now - (self._save_asked or now)
        self.save_seconds.append(seconds)
        self._last_save = (step, now)
        self.ctx.report({"event": "checkpoint", "step": step, "seconds": round(seconds, 3)})

    def restore_best(self, model: Any) -> int | None:
        """Load the best weights seen at an evaluation if they are not the last; their step."""
        if self.best is None or self.best_weights is None:
            return None
        model.load_state_dict(self.best_weights)
        return self.best[1]


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


def _snapshot(model: Any) -> dict[str, Any]:
    """A CPU copy of the model's weights (copies: tied tensors are saved separately)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
