"""The script recipe: a user's ``train.py`` run as SageMaker runs a training script.

The job gets what SageMaker gives a training container (see ``executors/base.py``):
``SM_MODEL_DIR``, ``SM_CHANNEL_TRAIN`` and ``SM_CHANNEL_TEST`` (JSON Lines files, one record per
line with the schema's features and label), one ``SM_CHANNEL_<NAME>`` per entry of
``training.channels``, ``SM_OUTPUT_DATA_DIR``, ``SM_CHECKPOINT_DIR``, ``SM_NUM_GPUS``,
``SM_NUM_CPUS``, ``SM_CURRENT_HOST``, ``SM_HOSTS``, and ``training.params`` both as ``SM_HPS``
(JSON) and as ``--name value`` arguments (strings as they are, other values JSON-encoded, as
SageMaker passes them). The script runs in a copy of its folder (or ``training.source_dir``).

    script_job(config, workspace_root, store) -> ScriptJob    what to run, before the job;
                                                              .apply(spec) sets it on a JobSpec
    adopt(model_dir, schema) -> Manifest                      what it wrote, after the job
    adopt_stored(store, model_uri, local, schema) -> str      adopt the uploaded folder

A script does not write Tidal's manifest; ``adopt`` recognises the folder it left in
``SM_MODEL_DIR`` and writes ``tidal-model.json`` so the model is evaluated, registered and
served like any other. Layouts, first match wins (docs/custom-models.md has the details):

    tidal-model.json                 written by the script itself: kept, verified
    inference.py or code/inference.py with model_fn and predict_fn     flavor "python"
    config.json + model*.safetensors + tokenizer (Hugging Face)         flavor "transformers"
                                     (labels.json is added: the labels by class index)
    model.skops (scikit-learn)                                          flavor "sklearn"

Pickle-only weights (``pytorch_model.bin``, ``*.pt``, ``*.pkl``) are refused: Tidal never
loads pickle itself. Adoption reads files and parses ``inference.py``; it runs no user code.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidal.artifact import MANIFEST, Feature, Manifest, verify, write_manifest
from tidal.errors import TidalError, UsageError
from tidal.training.recipes.custom import INFERENCE_FILES

if TYPE_CHECKING:
    from tidal.config import Config
    from tidal.storage import Store
    from tidal.training.executors.base import JobSpec

DOCS = "docs/custom-models.md"
RESERVED_CHANNELS = frozenset({"train", "test"})
ADOPTED = "tidal.adopted"  # manifest param naming the layout adopt recognised
INFERENCE_FUNCTIONS = ("model_fn", "predict_fn")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".joblib")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")
LAYOUTS = (
    "inference.py (or code/inference.py) defining model_fn(model_dir) and predict_fn(rows, model)",
    "a Hugging Face sequence classifier: config.json, model.safetensors and the tokenizer files "
    "(model.save_pretrained(dir); tokenizer.save_pretrained(dir))",
    "a scikit-learn model saved with skops as model.skops",
    f"a {MANIFEST} written by the script",
)

_CHANNEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ScriptJob:
    """What the training job of a script runs: the fields of a ``JobSpec`` the script decides."""

    command: list[str]  # [python, script path relative to code_dir]
    code_dir: Path  # copied to the job's code/ folder, its working folder
    channels: dict[str, list[str]]  # extra channels (training.channels) → object URIs
    hyperparameters: dict[str, Any]  # training.params as they are: SM_HPS and --name value

    def apply(self, spec: JobSpec) -> JobSpec:
        """``spec`` (a built-in recipe's job) made to run the script instead."""
        return dataclasses.replace(
            spec,
            command=list(self.command),
            code_dir=str(self.code_dir),
            channels={**spec.channels, **self.channels},
            hyperparameters=dict(self.hyperparameters),
        )


def script_job(config: Config, workspace_root: Path, store: Store) -> ScriptJob:
    """The job of ``config.training.script``; raises UsageError naming the key that is wrong."""
    training = config.training
    root = workspace_root.resolve()
    if not training.script:
        raise UsageError(
            "training.recipe is script but training.script is empty",
            hint="set training.script in tidal.yaml to your training script, e.g. train.py",
        )
    source = (root / training.source_dir).resolve() if training.source_dir else None
    if source is not None and not source.is_dir():
        raise UsageError(
            f"training.source_dir {training.source_dir!r} is not a folder ({source})",
            hint="set it to the folder holding the script and its modules, relative to "
            "the workspace",
        )
    script = _find_script(training.script, root, source)
    code_dir = source or script.parent
    if not script.is_relative_to(code_dir):
        raise UsageError(
            f"training.script {training.script!r} ({script}) is outside training.source_dir "
            f"{training.source_dir!r} ({code_dir})",
            hint="the job runs in a copy of source_dir: put the script inside it",
        )
    for key in training.params:
        if not _PARAM_NAME.fullmatch(str(key)):
            raise UsageError(
                f"training.params key {key!r} cannot be passed as --{key}",
                hint="use letters, digits, '_', '-' or '.', starting with a letter or '_'",
            )
    channels = {
        name: channel_objects(store, name, uri) for name, uri in sorted(training.channels.items())
    }
    return ScriptJob(
        command=[sys.executable, script.relative_to(code_dir).as_posix()],
        code_dir=code_dir,
        channels=channels,
        hyperparameters=dict(training.params),
    )


def _find_script(name: str, root: Path, source: Path | None) -> Path:
    # relative to the workspace, or to source_dir as SageMaker's entry_point is
    candidates = [(root / name).resolve()]
    if source is not None:
        candidates.append((source / name).resolve())
    for path in candidates:
        if path.is_file():
            if path.suffix != ".py":
                raise UsageError(
                    f"training.script {name!r} is not a Python file ({path})",
                    hint="the script recipe runs 'python <script>'; point it to a .py file",
                )
            return path
    looked = " or ".join(str(p) for p in dict.fromkeys(candidates))
    raise UsageError(
        f"training.script {name!r} not found: no file {looked}",
        hint="set training.script to the script's path relative to the workspace, e.g. train.py",
    )


def channel_objects(store: Store, name: str, uri: str) -> list[str]:
    """The object URIs of channel ``name``: one object, or every object under a prefix.

    ``uri`` is a URI inside the workspace store, or a key relative to its root.
    """
    where = f"training.channels.{name}"
    if not _CHANNEL_NAME.fullmatch(name):
        raise UsageError(
            f"{where}: channel name {name!r} cannot name SM_CHANNEL_{name.upper()}",
            hint="use letters, digits and '_', starting with a letter",
        )
    if name.lower() in RESERVED_CHANNELS:
        raise UsageError(
            f"{where}: the {name} channel is Tidal's own (the prepared split of the data)",
            hint="give the extra channel another name",
        )
    try:
        key = store.key_of(uri) if "://" in uri else uri.strip("/")
    except UsageError as exc:
        raise UsageError(
            f"{where}: {uri} is outside the workspace store {store.root}",
            hint="upload the files into the store and name them by URI or by key",
        ) from exc
    objects = store.list(key)
    exact = [o for o in objects if o.key == key]
    found = exact or [o for o in objects if o.key.startswith(key + "/")]
    if not found:
        raise UsageError(
            f"{where}: nothing at {store.uri(key)}",
            hint="name an object or a prefix holding objects in the workspace store",
        )
    return [store.uri(o.key) for o in found]


# -- after the job ----------------------------------------------------------------------------


def adopt_stored(
    store: Store,
    model_uri: str,
    local: Path,
    schema: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
) -> str:
    """Adopt the model folder a script job uploaded to ``model_uri``; return the manifest sha256.

    The folder is downloaded afresh into ``local`` (its old content removed), adopted, and its
    ``tidal-model.json`` uploaded beside the files.
    """
    from tidal.storage import sha256_file

    prefix = store.key_of(model_uri)
    if local.exists():
        shutil.rmtree(local)
    local.mkdir(parents=True)
    if store.list(prefix):
        store.get_dir(prefix, local)
    adopt(local, schema, params=params)
    store.put_file(f"{prefix}/{MANIFEST}", local / MANIFEST)
    return sha256_file(local / MANIFEST)


def adopt(
    model_dir: Path, schema: dict[str, Any], *, params: dict[str, Any] | None = None
) -> Manifest:
    """Recognise what a script wrote into ``model_dir`` and write its ``tidal-model.json``.

    ``schema`` is the dataset schema (``label_column``, ``features``, ``labels``, ``task``,
    ``text_column``). Raises TidalError listing what was found when no layout fits.
    """
    existing = model_dir / MANIFEST
    if existing.is_file():
        try:
            previous = Manifest.from_json(existing.read_text(encoding="utf-8"))
        except (ValueError, TypeError, KeyError) as exc:
            raise TidalError(
                f"the {MANIFEST} in {model_dir} is not a valid manifest: {exc}"
            ) from exc
        if ADOPTED not in previous.params:  # the script's own manifest: keep it
            return _check_own(verify(model_dir), schema)
        existing.unlink()  # one this function wrote for an earlier attempt of the job
    inference = next((model_dir / f for f in INFERENCE_FILES if (model_dir / f).is_file()), None)
    if inference is not None:
        _check_inference(inference)
        return _write(model_dir, "python", schema, schema["labels"], params, layout="python")
    config = _transformers_config(model_dir)
    if config is not None:
        from tidal.training.recipes.text import LABELS_FILE

        labels = _check_transformers(model_dir, config, schema)
        features = [_text_feature(schema)]
        # the transformers flavor reads the labels, in class-index order, from labels.json
        (model_dir / LABELS_FILE).write_text(json.dumps(labels), encoding="utf-8")
        return _write(
            model_dir,
            "transformers",
            schema,
            labels,
            params,
            layout="transformers",
            features=features,
        )
    if (model_dir / "model.skops").is_file():
        _check_skops(model_dir / "model.skops", schema["labels"])
        return _write(model_dir, "sklearn", schema, schema["labels"], params, layout="sklearn")
    raise TidalError(
        f"cannot tell how to serve the model the script wrote to SM_MODEL_DIR; found: "
        f"{_listing(model_dir)}",
        hint="accepted layouts: " + "; ".join(LAYOUTS) + f" (see {DOCS})",
    )


def _write(
    model_dir: Path,
    flavor: str,
    schema: dict[str, Any],
    labels: list[Any],
    params: dict[str, Any] | None,
    *,
    layout: str,
    features: list[Feature] | None = None,
) -> Manifest:
    manifest = Manifest(
        flavor=flavor,
        task=schema.get("task", "tabular"),
        features=features or _features(schema),
        labels=labels,
        label_column=schema["label_column"],
        params={**(params or {}), ADOPTED: layout},
    )
    write_manifest(model_dir, manifest)
    return manifest


def _features(schema: dict[str, Any]) -> list[Feature]:
    return [f if isinstance(f, Feature) else Feature(**f) for f in schema["features"]]


def _check_own(manifest: Manifest, schema: dict[str, Any]) -> Manifest:
    known = {f.name for f in _features(schema)}
    unknown = [name for name in manifest.feature_names if name not in known]
    if unknown:
        raise TidalError(
            f"the {MANIFEST} the script wrote names features the data does not have: "
            f"{', '.join(unknown)}",
            hint=f"the data's features are {', '.join(sorted(known))}",
        )
    return manifest


def _check_inference(path: Path) -> None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise TidalError(f"{path} is not valid Python: {exc}") from exc
    defined: set[str] = set()
    for node in tree.body:  # top-level definitions, assignments and imports
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined |= {alias.asname or alias.name for alias in node.names}
    missing = [name for name in INFERENCE_FUNCTIONS if name not in defined]
    if missing:
        raise TidalError(
            f"{path} does not define {' and '.join(missing)}",
            hint="a custom model's inference.py defines model_fn(model_dir) -> model and "
            f"predict_fn(rows, model) -> predictions (see {DOCS})",
        )


def _transformers_config(model_dir: Path) -> dict[str, Any] | None:
    """The ``config.json`` of a Hugging Face model folder; None for any other folder."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None  # some other config file of the script's own
    if not isinstance(config, dict) or not ({"model_type", "architectures"} & set(config)):
        return None
    return config


def _check_transformers(
    model_dir: Path, config: dict[str, Any], schema: dict[str, Any]
) -> list[Any]:
    """The labels in class-index order of a Hugging Face classifier folder; checks its files."""
    names = {p.name for p in model_dir.iterdir() if p.is_file()}
    if not any(n.endswith(".safetensors") for n in names):
        pickled = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        raise TidalError(
            f"{model_dir} holds Hugging Face weights only as pickle "
            f"({', '.join(pickled) or 'no weights file at all'}); Tidal never loads pickle",
            hint="save with safetensors: model.save_pretrained(dir, safe_serialization=True) "
            "(the default of recent transformers and of Trainer.save_model)",
        )
    if not any(n in names for n in TOKENIZER_FILES):
        raise TidalError(
            f"{model_dir} has a model but no tokenizer files ({', '.join(TOKENIZER_FILES)})",
            hint="save the tokenizer beside the model: tokenizer.save_pretrained(dir), or pass "
            "it to the Trainer (processing_class=tokenizer) before trainer.save_model(dir)",
        )
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise TidalError(
            f"{model_dir} holds a {', '.join(architectures) or 'model of unknown architecture'}; "
            "Tidal serves Hugging Face sequence classifiers (AutoModelForSequenceClassification)",
            hint=f"serve other models through an inference.py (see {DOCS})",
        )
    return _class_labels(config.get("id2label") or {}, schema["labels"], model_dir)


def _class_labels(id2label: dict[str, Any], labels: list[Any], model_dir: Path) -> list[Any]:
    """Map the model's class names (``config.id2label``) to the data's labels, by index."""
    by_name = {str(label): label for label in labels}
    count = len(id2label)
    names = [str(id2label.get(str(i), "")) for i in range(count)]  # JSON keys are strings
    example = ", ".join(f"{i}: {str(label)!r}" for i, label in enumerate(labels))
    hint = (
        f"set model.config.id2label = {{{example}}} (and label2id) in the order your script "
        "encodes the labels, before saving the model"
    )
    if count != len(labels):
        raise TidalError(
            f"the model in {model_dir} has {count} classes, the data has {len(labels)} labels "
            f"({', '.join(map(str, labels))})",
            hint=hint,
        )
    if all(name in by_name for name in names) and len(set(names)) == count:
        return [by_name[name] for name in names]
    if names == [f"LABEL_{i}" for i in range(count)] and labels == list(range(count)):
        return list(labels)  # default names, and the labels are the class indexes themselves
    raise TidalError(
        f"the model's class names in {model_dir / 'config.json'} ({', '.join(names)}) are not "
        f"the data's labels ({', '.join(map(str, labels))})",
        hint=hint,
    )


def _text_feature(schema: dict[str, Any]) -> Feature:
    features = _features(schema)
    text = schema.get("text_column")
    chosen = [f for f in features if f.name == text] if text else []
    if not chosen and len(features) == 1 and features[0].type == "string":
        chosen = features
    if not chosen:
        raise TidalError(
            "a Hugging Face text classifier takes one text feature; the data has "
            f"{', '.join(f'{f.name} ({f.type})' for f in features)}",
            hint="set data.task: text and data.text_column in tidal.yaml",
        )
    return chosen[0]


def _check_skops(path: Path, labels: list[Any]) -> None:
    """Load the model as the sklearn flavor will, and check it can answer with probabilities."""
    import skops.io as sio

    from tidal.training.recipes.tabular import TRUSTED_TYPES

    try:
        needed = set(sio.get_untrusted_types(file=path))
    except Exception as exc:  # not a zip skops can read
        raise TidalError(f"{path} is not a skops file: {exc}") from exc
    unexpected = sorted(needed - TRUSTED_TYPES)
    if unexpected:
        raise TidalError(
            f"{path} needs types outside Tidal's scikit-learn allow-list: {', '.join(unexpected)}",
            hint="use the estimators of the tabular recipe, or serve the model through an "
            f"inference.py (see {DOCS})",
        )
    model = sio.load(path, trusted=sorted(needed))
    if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
        raise TidalError(
            f"{path} holds a fitted {type(model).__name__} without predict_proba; Tidal's "
            "scikit-learn flavor serves fitted classifiers with probabilities",
            hint="use a classifier with predict_proba (SVC needs probability=True), or serve "
            f"the model through an inference.py (see {DOCS})",
        )
    known = {str(label) for label in labels}
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    strangers = [str(c) for c in classes if str(c) not in known]
    if strangers:
        raise TidalError(
            f"{path} predicts classes the data does not have: {', '.join(strangers)} "
            f"(the data's labels: {', '.join(sorted(known))})",
            hint="fit the model on the label column's values as they are, not on codes",
        )


def _listing(folder: Path, limit: int = 20) -> str:
    if not folder.is_dir():
        return "no folder at all"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if not files:
        return "nothing (the folder is empty)"
    shown = ", ".join(files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")
