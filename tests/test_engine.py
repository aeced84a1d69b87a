"""Engine tests: schedules, EMA, exact resume after SIGKILL, torchrun DDP on one and two "nodes",
divergence, skip."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from ssl_bench.engine import TrainingDiverged, pretrain, resolve_recipe
from ssl_bench.engine.data import EpochOrder
from ssl_bench.engine.recipe import build_method, resolve_precision
from ssl_bench.engine.step import build_optimizer, ema_update
from ssl_bench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# ssl_bench importable from the checkout even when the package is not installed
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def make_images(root: Path, per_class: int = 10, classes: int = 2, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "imagenet" / "train" / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] = 220
            Image.fromarray(pixels).save(folder / f"img{i}.JPEG")
    (root / "imagenet" / "val").mkdir(parents=True, exist_ok=True)
    return root


TINY_MSN = """method: msn
backbone: {{arch: vit_tiny_patch16_224, patch_size: 16}}
data: {{root: {root}, batch_size: 2, num_workers: {workers}}}
optim: {{epochs: 2, warmup_epochs: 1, lr: 0.0005, clip_grad: 3.0, ipe_scale: 1.25, step_offset: 1}}
ema: {{schedule: linear, ipe_scale: 1.25}}
msn: {{rand_size: 32, focal_size: 16, focal_views: 1, hidden_dim: 32, output_dim: 8, num_proto: 6}}
checkpoint: {{every_steps: {every}}}
"""


def write_recipe(tmp_path: Path, data: Path, workers: int = 0, every: int = 5) -> Path:
    path = tmp_path / "msn_test.yaml"
    path.write_text(TINY_MSN.format(root=data, workers=workers, every=every))
    return path


def run_engine(recipe: Path, out: Path, env_extra: dict | None = None, sets=()) -> subprocess.CompletedProcess:
    env = {**ENV, **(env_extra or {})}
    cmd = [PY, "-m", "ssl_bench.cli", "pretrain", "--recipe", str(recipe), "--out", str(out), "--device", "cpu"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def final_state(run: Path) -> dict[str, torch.Tensor]:
    meta = json.loads((run / "train_state.json").read_text())
    return meta, load_file(str(run / meta["weights"]["file"]))


# ----- one step and the data order -----------------------------------------------------------
def test_ema_update_golden():
    online, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0), online.bias.fill_(-1.0), teacher.weight.fill_(3.0), teacher.bias.fill_(0.0)
    ema_update([(online, teacher)], 0.9)
    assert torch.allclose(teacher.weight, torch.full((1, 2), 0.9 * 3 + 0.1 * 1))  # 2.8
    assert torch.allclose(teacher.bias, torch.full((1,), -0.1))


def test_epoch_order_splits_ranks_and_resumes():
    orders = [EpochOrder(11, 2, 2, r, seed=3) for r in range(2)]
    full = [orders[r].batches(epoch=1) for r in range(2)]
    assert orders[0].ipe == 2  # 11 // 2 ranks = 5 per rank, 2 whole batches of 2
    seen = [i for r in range(2) for b in full[r] for _, i in b]
    assert len(seen) == len(set(seen)) == 8
    assert orders[0].batches(epoch=1, start=1) == full[0][1:]
    assert orders[0].batches(epoch=2) != full[0]


def test_lars_optimizer_builds(tmp_path):
    recipe = resolve_recipe(write_recipe(tmp_path, tmp_path), ["optim.name=lars"])
    method = build_method(recipe)
    opt = build_optimizer(method, recipe)
    assert type(opt).__name__ == "Lars"
    with pytest.raises(UserError, match="valid: adamw, lars"):
        build_optimizer(method, resolve_recipe(write_recipe(tmp_path, tmp_path), ["optim.name=sgdx"]))


# ----- whole runs ------------------------------------------------------------------------------------
#: ``python KILLER NAME pretrain ...``: the engine, SIGKILLed once the temporary of the first write of NAME is
#: complete but not yet renamed (the moment a kill leaves a temporary behind)
KILL_IN_WRITE = """
import os, signal, sys
from ssl_bench import checkpoints
from ssl_bench.cli import main
from ssl_bench.engine import state
target = sys.argv[1]
def killing(write_file):
    def atomic_write(path, write):
        def write_then_die(tmp):
            write(tmp)
            if path.name == target:
                os.kill(os.getpid(), signal.SIGKILL)
        return write_file(path, write_then_die)
    return atomic_write
state.atomic_write = killing(state.atomic_write)
checkpoints.atomic_write = killing(checkpoints.atomic_write)
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """20 images, batch 2: 10 steps an epoch, 20 steps, a state every 5; run once without a kill."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    data = make_images(tmp / "data", per_class=10)
    recipe = write_recipe(tmp, data, workers=1, every=5)
    full = run_engine(recipe, tmp / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    return recipe, tmp / "full"


@pytest.mark.parametrize("moment, resumed_at", [
    ("mid-run, after step 13's update", 10),
    ("during the temporary of the step-15 train state", 10),
    ("during the temporary of the final export", 20),
])
def test_resume_after_sigkill_is_exact(moment, resumed_at, uninterrupted, tmp_path):
    recipe, full = uninterrupted
    run = tmp_path / "resumed"
    if moment.startswith("mid-run"):
        killed = run_engine(recipe, run, {"SSL_BENCH_KILL_AT_STEP": "13"})
    else:
        killer = tmp_path / "killer.py"
        killer.write_text(KILL_IN_WRITE)
        target = "train_state-000000015.safetensors" if "step-15" in moment else "checkpoint.safetensors"
        killed = subprocess.run([PY, str(killer), target, "pretrain", "--recipe", str(recipe), "--out", str(run),
                                 "--device", "cpu"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert list(run.glob(f".{target}.*.tmp")), "the kill came before the temporary was written"
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    meta, _ = final_state(run)
    assert meta["step"] == resumed_at and not (run / "checkpoint.json").exists()
    resumed = run_engine(recipe, run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {resumed_at}" in resumed.stderr
    meta_a, a = final_state(full)
    meta_b, b = final_state(run)
    assert meta_a["step"] == meta_b["step"] == 20
    assert a.keys() == b.keys()
    for key in a:
        if not key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key
    exported_a, exported_b = (load_file(str(r / "checkpoint.safetensors")) for r in (full, run))
    assert exported_a.keys() == exported_b.keys()
    assert all(torch.equal(exported_a[k], exported_b[k]) for k in exported_a)
    # the log holds each step once after the resume
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    # no temporary left; nothing but safetensors + JSON (+ the YAML recipe and the log) in the run folder
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert {p.suffix for p in run.iterdir()} <= {".safetensors", ".json", ".yaml", ".jsonl"}


def rank_probe(folder: Path, at_step: int) -> Path:
    """A torchrun entry point around the engine: each rank dumps its parameters after step
    ``at_step`` (``rank<R>.safetensors``) and lists every file it writes (``writes<R>.txt``)."""
    probe = folder / "probe.py"
    probe.write_text(
        "import os, sys\n"
        "from safetensors.torch import save_file\n"
        "from ssl_bench.cli import main\n"
        "from ssl_bench.engine import loop, state\n"
        f"out, rank = r'{folder}', os.environ['RANK']\n"
        "def recorded(write):\n"
        "    def wrapper(path, *args, **kwargs):\n"
        "        with open(f'{out}/writes{rank}.txt', 'a') as handle:\n"
        "            handle.write(f'{path}\\n')\n"
        "        return write(path, *args, **kwargs)\n"
        "    return wrapper\n"
        "for module, name in ((state, 'atomic_write'), (state, 'atomic_write_json'), (state, 'atomic_write_bytes'),\n"
        "                     (loop, 'atomic_write_bytes'), (loop, 'save_checkpoint')):\n"
        "    setattr(module, name, recorded(getattr(module, name)))\n"
        "save_state = loop._save\n"
        "def _save(run, method, optimizer, step, *rest):\n"
        "    save_state(run, method, optimizer, step, *rest)\n"
        f"    if step == {at_step}:\n"
        "        sd = {k: v.detach().clone().contiguous() for k, v in method.named_parameters()}\n"
        "        save_file(sd, f'{out}/rank{rank}.safetensors')\n"
        "loop._save = _save\n"
        "sys.exit(main(['pretrain', *sys.argv[1:]]))\n")
    return probe


def assert_ranks_agree_and_only_rank_0_wrote(tmp_path: Path, recipe: Path, out: Path) -> None:
    # parameters of the online and target networks (BN running statistics are rank-local on CPU,
    # where SyncBatchNorm does not exist; DDP broadcasts rank 0's at each forward)
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and any(k.startswith("target_backbone.") for k in r0)
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    meta = json.loads((out / "train_state.json").read_text())
    assert meta["step"] == 4 and meta["world_size"] == 2
    init = build_method(resolve_recipe(recipe, []))
    assert not torch.equal(init.state_dict()["prototypes"], r0["prototypes"])  # it did train
    assert (out / "checkpoint.json").is_file()
    written = {Path(line).name for line in (tmp_path / "writes0.txt").read_text().splitlines()}
    assert {"recipe.yaml", "train_state.json", "checkpoint"} <= written
    assert not (tmp_path / "writes1.txt").exists()  # rank 1 wrote nothing to the run folder
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the log, appended to by rank 0 alone


def torchrun_rank_weights(tmp_path: Path, recipe: Path, out: Path, steps: int, *sets: str) -> tuple[dict, dict]:
    """Pretrain ``recipe`` under torchrun with 2 CPU ranks, each rank's parameters dumped after
    ``steps`` steps by ``rank_probe``. Returns (rank 0's, rank 1's)."""
    torchrun = str(Path(PY).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(rank_probe(tmp_path, steps)),
           "--recipe", str(recipe), "--out", str(out), "--device", "cpu"]
    for assignment in sets:
        cmd += ["--set", assignment]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))


def test_torchrun_two_ranks_hold_identical_weights(tmp_path):
    data = make_images(tmp_path / "data", per_class=4)
    recipe = write_recipe(tmp_path, data, workers=0, every=0)
    out = tmp_path / "ddp"
    # 8 images / 2 ranks / batch 2 -> 2 steps per epoch, 4 steps
    torchrun_rank_weights(tmp_path, recipe, out, 4, "checkpoint.every_steps=2")
    assert_ranks_agree_and_only_rank_0_wrote(tmp_path, recipe, out)


def test_two_nodes_with_a_c10d_rendezvous_on_localhost(tmp_path):
    """torchrun --nnodes 2 twice: two agents that believe they are two nodes meet at a c10d
    rendezvous on localhost (gloo) and train into one shared run folder."""
    data = make_images(tmp_path / "data", per_class=4)
    recipe = write_recipe(tmp_path, data, workers=0, every=0)
    torchrun = str(Path(PY).with_name("torchrun"))
    out = tmp_path / "shared"
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    command = [torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
               "--rdzv_endpoint", f"localhost:{port}", "--rdzv_id", "ssl-bench-test",
               str(rank_probe(tmp_path, 4)), "--recipe", str(recipe), "--out", str(out), "--device", "cpu",
               "--set", "checkpoint.every_steps=2"]
    nodes = [subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr[-3000:]
    assert_ranks_agree_and_only_rank_0_wrote(tmp_path, recipe, out)


def test_non_finite_loss_stops_and_keeps_last_state(tmp_path, monkeypatch):
    from ssl_bench.methods.msn import MSN

    data = make_images(tmp_path / "data", per_class=4)
    recipe = write_recipe(tmp_path, data, every=2)
    original = MSN.loss

    def loss(self, batch):
        value, logs = original(self, batch)
        return (value * float("nan"), logs) if self.step == 3 else (value, logs)

    monkeypatch.setattr(MSN, "loss", loss)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss .* at step 3 .*step 2\) is intact"):
        pretrain(recipe, [], tmp_path / "run", device="cpu")
    meta, state = final_state(tmp_path / "run")
    assert meta["step"] == 2 and all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())


def test_finished_run_is_skipped_and_recipe_change_refused(tmp_path):
    data = make_images(tmp_path / "data", per_class=2)
    recipe = write_recipe(tmp_path, data, every=0)
    sidecar = pretrain(recipe, ["precision=bf16"], tmp_path / "run", device="cpu")
    meta = json.loads(Path(sidecar).read_text())
    assert meta["encoder"] == "target" and meta["eval"]["feature"] == "cls_prenorm" and meta["step"] == 4
    stamp = Path(sidecar).stat().st_mtime_ns
    assert pretrain(recipe, ["precision=bf16"], tmp_path / "run", device="cpu") == sidecar
    assert Path(sidecar).stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="different recipe .*optim.lr"):
        pretrain(recipe, ["precision=bf16", "optim.lr=0.1"], tmp_path / "run", device="cpu")
    from ssl_bench.checkpoints import load_spec

    assert load_spec(str(tmp_path / "run")).eval["feature"] == "cls_prenorm"


# ----- precision: auto -----------------------------------------------------------------------------
@pytest.fixture
def cpu_bf16(monkeypatch):
    """Fake the CPU's bf16 instructions: ``cpu_bf16(avx512_bf16, amx)``."""
    def fake(avx512_bf16: bool, amx: bool = False) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    return fake


def test_auto_precision_is_bf16_only_where_the_device_has_it(cpu_bf16, monkeypatch):
    auto = {"method": "msn", "precision": "auto", "seed": 0}
    cpu = torch.device("cpu")
    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        cpu_bf16(avx512_bf16, amx)
        resolved = resolve_precision(auto, cpu)
        assert resolved == {"method": "msn", "precision": expected, "precision_auto": True, "seed": 0}
        assert list(resolved) == ["method", "precision", "precision_auto", "seed"]  # stored beside precision
    cpu_bf16(True)
    assert resolve_precision({"precision": "fp32"}, cpu) == {"precision": "fp32"}  # a chosen one stays
    cpu_bf16(False)
    assert resolve_precision({"precision": "bf16"}, cpu) == {"precision": "bf16"}
    with pytest.raises(UserError, match="precision: 'fp16' is not valid; use auto, fp32, bf16"):
        resolve_precision({"precision": "fp16"}, cpu)
    # CUDA: native bf16 only (compute capability 8+), emulation does not count
    asked = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, native=native: asked.append(including_emulation)
                            or (native or including_emulation))
        assert resolve_precision(auto, torch.device("cuda:0"))["precision"] == expected
    assert asked == [False, False]


def test_a_run_stores_the_resolved_precision(tmp_path, cpu_bf16):
    """The engine default is auto; the run's recipe.yaml and checkpoint say what ran and that auto chose it."""
    data = make_images(tmp_path / "data", per_class=2)
    recipe = write_recipe(tmp_path, data, every=0)
    assert resolve_recipe(recipe, [])["precision"] == "auto"
    cpu_bf16(False)
    sidecar = pretrain(recipe, [], tmp_path / "run", device="cpu")
    meta = json.loads(Path(sidecar).read_text())
    stored = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    for saved in (meta["recipe"], stored):
        assert (saved["precision"], saved["precision_auto"]) == ("fp32", True)
    assert meta["machine"]["threads"] == torch.get_num_threads()
    assert pretrain(recipe, [], tmp_path / "run", device="cpu") == sidecar  # found finished: same recipe
    cpu_bf16(True)  # the same recipe on a bf16 machine is another run
    with pytest.raises(UserError, match="different recipe .*precision"):
        pretrain(recipe, [], tmp_path / "run", device="cpu")


def test_bad_inputs_are_user_errors(tmp_path):
    recipe = write_recipe(tmp_path, tmp_path / "missing")
    with pytest.raises(UserError, match="no such folder"):
        pretrain(recipe, [], tmp_path / "run", device="cpu")
    with pytest.raises(UserError, match="unknown method 'nope'"):
        resolve_recipe(recipe, ["method=nope"])
    with pytest.raises(UserError, match="unknown key 'msn.bogus'"):
        resolve_recipe(recipe, ["msn.bogus=1"])
