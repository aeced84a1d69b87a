"""The results store: one JSON file per evaluation, written atomically, merged on read.

Each evaluation writes ``RESULTS/<protocol>/<timestamp>-<host>-<pid>-<random>.json``
through a temporary file and a rename, so any number of processes, on one machine or
on a shared file system, can write at once and no record is lost or half-written.
A file holds the evaluation's context (checkpoint, its hash, the resolved protocol
recipe, code commit, versions, wall time, timestamp) and its records, one per
(dataset, metric). ``load_results`` flattens every file into one pandas DataFrame.

Per-sample predictions (for bootstrap confidence intervals)
-----------------------------------------------------------
A protocol whose metric is the mean of a per-sample score (top-1 accuracy: 1 if the
sample is classified correctly, else 0; any score in [0, 1] whose mean is the metric)
stores that score per test sample, in one of two equivalent ways:

* ``write_evaluation(..., predictions={"<dataset>": {"correct": array}})``: the array
  applies to every record of that dataset; ``{"<dataset>": {"<metric>": array}}`` to one
  metric only (e.g. k-NN's ``top1_k10`` and ``top1_k20`` differ per sample); a metric key
  wins over ``"correct"``.
* a record carrying ``"per_sample": array`` (e.g. ``{"dataset": "imagenet", "metric":
  "top1", "value": 72.3, "per_sample": correct}``): it is moved out of the JSON into the
  same file, so ``Protocol.run`` can return it and ``evaluate`` needs no change.

The arrays go to ``<same stem>.npz`` (compressed, written atomically *before* the JSON),
and each such record gets ``"predictions": {"file": "<stem>.npz", "key": ..., "scale": s}``
where ``value == s * mean(array)`` (``s`` is 100 for percentages, 1 for fractions; it is
inferred and checked on writing). ``load_predictions(json_or_npz_path)`` reads them back,
``load_results`` exposes them as the columns ``predictions`` (npz path),
``predictions_key`` and ``predictions_scale``.

Repeats: records may carry ``"seed"`` and/or ``"split"`` (e.g. MSN's 3 low-shot splits,
one record per split with the same metric name); leaderboards average repeats of a cell
and report their standard deviation.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_write, atomic_write_json
from .errors import UserError
from .filters import normalise_filter
from .progress import progress
from .provenance import code_version, describe_machine, library_versions, run_machine, utc_now

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = 1
RECORD_COLUMNS = ["checkpoint", "method", "arch", "protocol", "dataset", "metric", "value",
                  "checkpoint_sha256", "code_commit", "code_dirty", "torch", "machine", "wall_time_s",
                  "timestamp", "file",
                  "seed", "split", "predictions", "predictions_key", "predictions_scale", "recipe_key", "imported",
                  "features"]
PREDICTION_SCALES = (100.0, 1.0)  # percent, fraction


def _prediction_key(dataset: str, name: str) -> str:
    return f"{dataset}/{name}"


def _attach_predictions(records: list[dict], predictions: dict | None, npz_name: str):
    """Records with per-sample arrays split out: (JSON-safe records, {npz key: array})."""
    arrays: dict[str, np.ndarray] = {}
    for dataset, per_metric in (predictions or {}).items():
        if not isinstance(per_metric, dict):
            raise ValueError(f"predictions[{dataset!r}] must be a dict like {{'correct': array}}, "
                             f"got {type(per_metric).__name__}")
        for name, array in per_metric.items():
            arrays[_prediction_key(dataset, name)] = np.asarray(array, dtype=np.float64).ravel()
    out = []
    for record in records:
        record = dict(record)
        if "predictions" in record:
            raise ValueError(f"result record {record['dataset']}/{record['metric']}: 'predictions' is the store's "
                             "own key (per-sample arrays); pass 'per_sample' or name the field otherwise")
        per_sample = record.pop("per_sample", None)
        own_key = _prediction_key(record["dataset"], record["metric"])
        for repeat in ("split", "seed"):  # repeats of one metric in one evaluation stay apart
            if record.get(repeat) is not None:
                own_key += f"/{repeat}={record[repeat]}"
        if per_sample is not None:
            arrays[own_key] = np.asarray(per_sample, dtype=np.float64).ravel()
        _check_array(own_key, arrays)
        scale, key = None, None
        if own_key in arrays:  # stored for this very metric: it must match
            key, scale = own_key, _infer_scale(record, arrays[own_key], strict=True)
        elif _prediction_key(record["dataset"], "correct") in arrays:
            # the dataset-wide array: attached to the metrics it is the mean of (top1, not top5)
            key = _prediction_key(record["dataset"], "correct")
            _check_array(key, arrays)
            scale = _infer_scale(record, arrays[key], strict=False)
        if scale is not None:
            record["predictions"] = {"file": npz_name, "key": key, "scale": scale}
        out.append(record)
    for key in arrays:
        _check_array(key, arrays)
    return out, arrays


def _check_array(key: str, arrays: dict) -> None:
    if key in arrays and (arrays[key].size == 0 or not np.all(np.isfinite(arrays[key]))):
        raise ValueError(f"predictions {key!r}: need a non-empty finite per-sample array")


def _infer_scale(record: dict, array: np.ndarray, *, strict: bool) -> float | None:
    mean = float(np.mean(array))
    for scale in PREDICTION_SCALES:
        if abs(scale * mean - float(record["value"])) <= 1e-4 * max(1.0, abs(float(record["value"]))):
            return scale
    if not strict:
        return None
    raise ValueError(f"record {record['dataset']}/{record['metric']}: value {record['value']} is neither "
                     f"100 x nor 1 x the mean {mean:.6g} of its per-sample predictions; store the "
                     "per-sample score whose mean is the metric")


def write_evaluation(results_dir: Path, *, protocol: str, checkpoint: dict, recipe: dict,
                     records: list[dict], wall_time_s: float, extra: dict | None = None,
                     predictions: dict | None = None) -> Path:
    """Store one evaluation. ``records`` are dicts with ``dataset``, ``metric``, ``value``
    (optionally ``seed``, ``split``, ``per_sample``; see the module docstring).

    ``checkpoint`` holds at least ``label``, ``sha256``, ``method`` and ``arch``.
    ``predictions``: ``{dataset: {"correct" | metric: per-sample array}}``, saved to a
    compressed ``.npz`` next to the JSON for bootstrap confidence intervals.
    """
    for record in records:
        missing = {"dataset", "metric", "value"} - set(record)
        if missing:
            raise ValueError(f"result record {record} lacks {sorted(missing)}")
    stamp = utc_now().replace(":", "").replace("-", "")
    name = f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    path = Path(results_dir) / protocol / name
    npz_path = path.with_suffix(".npz")
    records, arrays = _attach_predictions(records, predictions, npz_path.name)
    if arrays:  # the arrays first: a JSON never references a missing file
        atomic_write(npz_path, lambda tmp: _save_npz(tmp, arrays))
    payload = {"schema": SCHEMA, "protocol": protocol, "checkpoint": checkpoint, "recipe": recipe,
               "code": code_version(), "versions": library_versions(), "machine": run_machine(),
               "wall_time_s": wall_time_s,
               "timestamp": utc_now(), "records": records, **(extra or {})}
    try:
        return atomic_write_json(path, payload)
    except BaseException:
        npz_path.unlink(missing_ok=True)  # no arrays without their evaluation
        raise


def _save_npz(tmp: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as handle:  # a file handle: np.savez would append ".npz" to a path
        np.savez_compressed(handle, **arrays)


def load_predictions(path: Path, key: str | None = None):
    """Per-sample predictions of one evaluation: ``{key: array}``, or one array if ``key``.

    ``path`` is the evaluation's ``.json`` or its ``.npz``; keys are ``"<dataset>/<name>"``
    with name ``correct`` or a metric.
    """
    npz_path = Path(path).with_suffix(".npz")
    if not npz_path.is_file():
        raise FileNotFoundError(f"{npz_path}: no per-sample predictions stored for this evaluation")
    with np.load(npz_path, allow_pickle=False) as data:
        if key is not None:
            if key not in data.files:
                raise KeyError(f"{npz_path}: no predictions {key!r}; stored: {', '.join(data.files)}")
            return data[key]
        return {name: data[name] for name in data.files}


def iter_evaluations(results_dir: Path, *, strict: bool = False):
    """Every readable stored evaluation as (path, payload). A file that is unreadable, not an evaluation,
    holds a record without a numeric value or points at missing or corrupt per-sample predictions is
    skipped with a warning naming it (``strict``: a ``UserError`` naming it), so one bad file does not
    hide the rest of the store."""
    files = sorted(Path(results_dir).glob("*/*.json"))
    for path in progress(files, desc="reading results", unit="file"):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            problem = _evaluation_problem(path, payload)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problem = f"unreadable ({type(err).__name__}: {err})"
        if problem is None:
            yield path, payload
        elif strict:
            raise UserError(f"{path}: {problem}; fix or remove the file (without --strict it is skipped)")
        else:
            print(f"ssl-bench: warning: skipping the result file {path}: {problem}", file=sys.stderr)


def _evaluation_problem(path: Path, payload) -> str | None:
    """What makes ``payload`` (read from ``path``) unusable as a stored evaluation, or None."""
    if not isinstance(payload, dict):
        return f"not an evaluation (a JSON {type(payload).__name__}, expected an object)"
    if not isinstance(payload.get("checkpoint"), dict) or not isinstance(payload.get("protocol"), str):
        return "not an evaluation (no 'checkpoint' object or 'protocol' name)"
    records = payload.get("records")
    if not isinstance(records, list):
        return "not an evaluation (no 'records' list)"
    arrays: dict[str, dict] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("dataset", "metric")):
            return f"records[{i}]: not an object with 'dataset' and 'metric' names"
        value = record.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            return f"records[{i}].value: {value!r} is not a finite number"
        preds = record.get("predictions")
        if preds:
            problem = _predictions_problem(path, preds, value, arrays)
            if problem is not None:
                return f"records[{i}].predictions: {problem}"
    return None


def _predictions_problem(path: Path, preds, value: float, arrays: dict) -> str | None:
    """Whether the per-sample predictions a record points at exist, load and average to its value."""
    if not isinstance(preds, dict) or not all(k in preds for k in ("file", "key", "scale")):
        return "expected an object with file, key and scale"
    npz = path.parent / str(preds["file"])
    if npz not in arrays:
        try:
            arrays[npz] = load_predictions(npz)
        except FileNotFoundError:
            return f"{npz} is missing"
        except Exception as err:  # noqa: BLE001 - numpy/zipfile raise many kinds for a corrupt file
            return f"{npz} is unreadable ({type(err).__name__})"
    array = arrays[npz].get(preds["key"])
    if array is None:
        return f"{npz} has no array {preds['key']!r}"
    if array.size == 0 or abs(float(preds["scale"]) * float(np.mean(array)) - value) > 1e-4 * max(1.0, abs(value)):
        return f"{npz}[{preds['key']!r}] does not average to the value {value}"
    return None


def recipe_key(recipe: dict | None) -> str:
    """Fingerprint of a resolved protocol recipe without its ``seed``: evaluations with equal keys
    are repeats of one experiment (averaged in tables); different keys are different experiments."""
    settings = {k: v for k, v in (recipe or {}).items() if k != "seed"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluation_key(checkpoint_sha256: str | None, protocol: str | None, recipe: dict | None) -> str:
    """What makes two evaluations the same run: the checkpoint's hash, the protocol and its fully
    resolved recipe (seed included). ``make demo`` and ``ssl-bench sweep`` skip an evaluation whose
    key is already stored."""
    identity = [checkpoint_sha256, protocol, recipe]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def stored_keys(results_dir: Path) -> set[str]:
    """The ``evaluation_key`` of every evaluation in the store (empty if there is no store yet)."""
    return {evaluation_key(payload.get("checkpoint", {}).get("sha256"), payload.get("protocol"),
                           payload.get("recipe"))
            for _, payload in iter_evaluations(results_dir)}


def reading_differences(reading: dict, conventions: dict) -> dict:
    """The parts of ``reading`` (its ``feature``, ``final_norm`` and ``input_filter``) that differ
    from a checkpoint's evaluation ``conventions``, with their values: a final norm compared as a
    flag, input filters in the form ``filters.normalise_filter`` gives them (None: no filter)."""
    differences = {}
    if reading.get("feature") != conventions.get("feature"):
        differences["feature"] = reading.get("feature")
    if "final_norm" in reading and bool(reading["final_norm"]) != bool(conventions.get("final_norm", True)):
        differences["final_norm"] = bool(reading["final_norm"])
    wanted = normalise_filter(reading.get("input_filter"), "input_filter of the reading")
    if wanted != normalise_filter(conventions.get("input_filter"), "input_filter of the checkpoint"):
        differences["input_filter"] = wanted
    return differences


def feature_variant(record: dict, conventions: dict | None) -> str:
    """How the features a record was measured on differ from its checkpoint's own evaluation
    conventions (``conventions``: the ``eval`` stored with the result): ``""`` where they agree or
    the protocol reads no such features, else e.g. ``"avgpool, no final norm"``. A table gives
    such evaluations rows of their own (the demo's random baselines read as each method reads)."""
    if "feature" not in record or not conventions:
        return ""
    parts = []
    for key, value in reading_differences(record, conventions).items():
        if key == "feature":
            parts.append(str(value))
        elif key == "final_norm":
            parts.append("final norm" if value else "no final norm")
        else:
            parts.append(f"{value['name']} input filter, sigma {value['sigma']:g}" if value else "no input filter")
    return ", ".join(parts)


def _imported(audit: dict | None) -> str | None:
    """One line on where an imported checkpoint's weights came from (None: not imported)."""
    if not audit:
        return None
    return (f"{audit['source']['file']} (sha256 {audit['source']['sha256'][:12]}), layout {audit['layout']}, "
            f"{audit['encoder']} encoder: {audit['summary']}")


def load_results(results_dir: Path, *, strict: bool = False) -> pd.DataFrame:
    """All records under ``results_dir`` as one DataFrame (columns ``RECORD_COLUMNS``); unusable files
    are skipped with a warning, or refused with ``strict`` (``iter_evaluations``)."""
    import pandas as pd  # heavy, and only the leaderboards read the store: not loaded by 'ssl-bench eval'

    rows = []
    for path, payload in iter_evaluations(results_dir, strict=strict):
        ckpt = payload.get("checkpoint", {})
        for record in payload.get("records", []):
            preds = record.get("predictions") or {}
            rows.append({"checkpoint": ckpt.get("label"), "method": ckpt.get("method"),
                         "arch": ckpt.get("arch"), "protocol": payload.get("protocol"),
                         "dataset": record["dataset"], "metric": record["metric"],
                         "value": record["value"], "checkpoint_sha256": ckpt.get("sha256"),
                         "code_commit": payload.get("code", {}).get("commit"),
                         "code_dirty": payload.get("code", {}).get("dirty"),
                         "torch": payload.get("versions", {}).get("torch"),
                         "machine": describe_machine(payload.get("machine")),
                         "wall_time_s": payload.get("wall_time_s"),
                         "timestamp": payload.get("timestamp"), "file": str(path),
                         "seed": record.get("seed"), "split": record.get("split"),
                         "predictions": str(path.parent / preds["file"]) if preds else None,
                         "predictions_key": preds.get("key"),
                         "predictions_scale": preds.get("scale"),
                         "recipe_key": recipe_key(payload.get("recipe")),
                         "imported": _imported(ckpt.get("import")),
                         "features": feature_variant(record, ckpt.get("eval"))})
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)
