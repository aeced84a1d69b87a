"""The results store: one JSON file per evaluation, written atomically, merged on read.

Each evaluation writes ``RESULTS/<protocol>/<timestamp>-<host>-<pid>-<random>.json``
through a temporary file and a rename, so any number of processes, on one machine or
on a shared file system, can write at once and no record is lost or half-written.
A file holds the evaluation's context (checkpoint, its hash, the resolved protocol
recipe, code commit, versions, wall time, timestamp) and its records, one per
(dataset, metric). ``load_results`` flattens every file into one pandas DataFrame.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import pandas as pd

from .atomic import atomic_write_json
from .progress import progress
from .provenance import code_version, library_versions, utc_now

SCHEMA = 1
RECORD_COLUMNS = ["checkpoint", "method", "arch", "protocol", "dataset", "metric", "value",
                  "checkpoint_sha256", "code_commit", "wall_time_s", "timestamp", "file"]


def write_evaluation(results_dir: Path, *, protocol: str, checkpoint: dict, recipe: dict,
                     records: list[dict], wall_time_s: float, extra: dict | None = None) -> Path:
    """Store one evaluation. ``records`` are dicts with ``dataset``, ``metric``, ``value``.

    ``checkpoint`` holds at least ``label``, ``sha256``, ``method`` and ``arch``.
    """
    for record in records:
        missing = {"dataset", "metric", "value"} - set(record)
        if missing:
            raise ValueError(f"result record {record} lacks {sorted(missing)}")
    stamp = utc_now().replace(":", "").replace("-", "")
    name = f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    path = Path(results_dir) / protocol / name
    payload = {"schema": SCHEMA, "protocol": protocol, "checkpoint": checkpoint, "recipe": recipe,
               "code": code_version(), "versions": library_versions(), "wall_time_s": wall_time_s,
               "timestamp": utc_now(), "records": records, **(extra or {})}
    return atomic_write_json(path, payload)


def iter_evaluations(results_dir: Path):
    """Every stored evaluation as (path, payload); unreadable files are reported, not fatal."""
    files = sorted(Path(results_dir).glob("*/*.json"))
    for path in progress(files, desc="reading results", unit="file"):
        try:
            yield path, json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            from .progress import log
            log(f"warning: skipping unreadable result file {path} ({err})")


def load_results(results_dir: Path) -> pd.DataFrame:
    """All records under ``results_dir`` as one DataFrame (columns ``RECORD_COLUMNS``)."""
    rows = []
    for path, payload in iter_evaluations(results_dir):
        ckpt = payload.get("checkpoint", {})
        for record in payload.get("records", []):
            rows.append({"checkpoint": ckpt.get("label"), "method": ckpt.get("method"),
                         "arch": ckpt.get("arch"), "protocol": payload.get("protocol"),
                         "dataset": record["dataset"], "metric": record["metric"],
                         "value": record["value"], "checkpoint_sha256": ckpt.get("sha256"),
                         "code_commit": payload.get("code", {}).get("commit"),
                         "wall_time_s": payload.get("wall_time_s"),
                         "timestamp": payload.get("timestamp"), "file": str(path)})
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)
