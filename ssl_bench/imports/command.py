"""``ssl-bench import``: a foreign checkpoint as one of ours, plus ``import_audit.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import atomic_write_json
from ..checkpoints import DEFAULT_EVAL, save_checkpoint
from ..progress import log
from . import LAYOUTS, import_state


def import_checkpoint(src: Path, out: Path, arch: str, *, label: str | None = None, **options) -> Path:
    """Import ``src`` into ``out/checkpoint.{safetensors,json}`` and write ``out/import_audit.json``;
    returns the sidecar. ``options`` as ``import_state`` (layout, encoder, allow_*, img_size)."""
    imported = import_state(Path(src), arch, **options)
    backbone = imported.backbone
    meta = {"method": "import", "encoder": imported.audit["encoder"],
            "label": label or f"import:{Path(src).name}",
            "eval": {**DEFAULT_EVAL, **imported.eval, "final_norm": backbone.final_norm},
            "import": imported.audit}
    sidecar = save_checkpoint(Path(out) / "checkpoint", backbone, meta)
    atomic_write_json(Path(out) / "import_audit.json", imported.audit)
    return sidecar


def run(args: argparse.Namespace) -> int:
    """``ssl-bench import``: the import, its layout and audit logged, the output folder printed."""
    sidecar = import_checkpoint(args.src, args.out, args.arch, label=args.label, layout=args.layout,
                                encoder=args.encoder, allow_missing=args.allow_missing,
                                allow_unused=args.allow_unused, img_size=args.img_size)
    audit = json.loads(sidecar.read_text())["import"]
    log(f"layout {audit['layout']}, chosen by {audit['chosen_by']}; {audit['encoder']} encoder "
        f"({'default: ' + audit['encoder_default_because'] if audit['encoder_is_default'] else 'by --encoder'})")
    log(f"audit: {audit['summary']}")
    print(sidecar.parent)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``ssl-bench import``."""
    p.add_argument("src", type=Path, help="the foreign .pth / .pth.tar file")
    p.add_argument("--arch", required=True, help="timm architecture to fill, e.g. vit_small_patch16_224")
    p.add_argument("--layout", default="auto", help=f"auto (recognised from the keys) or one of: {', '.join(LAYOUTS)}")
    p.add_argument("--encoder", help="which encoder of a checkpoint holding several (teacher/student, "
                                     "target/online, base/momentum); default: the one its paper evaluates")
    p.add_argument("--allow-missing", action="append", default=[], metavar="PATTERN",
                   help="glob of target tensors that may stay at their (seeded) initialisation (repeatable)")
    p.add_argument("--allow-unused", action="append", default=[], metavar="PATTERN",
                   help="glob of source tensors that may be left out (repeatable)")
    p.add_argument("--img-size", type=int, help="ViT image size (default: the source's position grid; "
                                                 "another size resamples pos_embed, recorded in the audit)")
    p.add_argument("--label", help="checkpoint label shown in results and leaderboards")
    p.add_argument("--out", type=Path, required=True, help="output folder")
