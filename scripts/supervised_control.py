"""Supervised control for the pretraining learning check (k-NN versus ``random:ARCH``).

Trains an encoder with the labels (cross-entropy through a linear head) for a step or wall-clock
budget and saves it as an ssl-bench checkpoint, so that ``ssl-bench eval --protocol knn`` scores it
exactly as it scores a pretraining run. It answers whether the architecture can learn class
information from the data within the budget at all; if labels cannot, no self-supervised recipe of
that budget can. Usage (see README, "Why the conv stem, and a supervised control"):

    .venv/bin/python scripts/supervised_control.py --arch vit_tiny_patch16_224 --img-size 64 \
        --data sb-data --seconds 530 --out runs/control-vit_tiny
    .venv/bin/ssl-bench eval --protocol knn --checkpoint runs/control-vit_tiny --data sb-data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import datasets, transforms

from ssl_bench.backbones import Backbone
from ssl_bench.checkpoints import DEFAULT_EVAL, save_checkpoint
from ssl_bench.data.loading import make_loader
from ssl_bench.engine.data import image_folder_root
from ssl_bench.progress import log, progress

# ImageNet mean/std, as every protocol recipe normalises.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, help="timm architecture, e.g. vit_tiny_patch16_224 or resnet18")
    p.add_argument("--img-size", type=int, default=64, help="training crop (the tiny recipes' 64 px)")
    p.add_argument("--data", type=Path, required=True, help="data root holding imagenet/train")
    p.add_argument("--out", type=Path, required=True, help="folder for checkpoint.{safetensors,json}")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds of training")
    p.add_argument("--batch-size", type=int, default=64, help="the tiny recipes' batch")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (the ViT tiny recipes' peak lr)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (DeiT's 0.05)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps is None and args.seconds is None:
        p.error("give --steps or --seconds (the budget)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    # torchvision's supervised ImageNet augmentation (random resized crop, flip) at the tiny crop size
    augment = transforms.Compose([transforms.RandomResizedCrop(args.img_size), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train = datasets.ImageFolder(image_folder_root(args.data, "train"), augment)
    loader = make_loader(train, args.batch_size, shuffle=True, drop_last=True, workers=1,
                         generator=torch.Generator().manual_seed(args.seed))
    backbone = Backbone(args.arch, img_size=args.img_size)
    head = torch.nn.Linear(backbone.embed_dim, len(train.classes))
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    step, losses, start = 0, [], time.perf_counter()
    bar = progress(total=args.steps, desc="supervised control", unit="step")
    while not _spent(args, step, start):
        for images, labels in loader:
            # the model's pooled output is the checkpoint's k-NN feature: CLS after the norm (ViT), avgpool (ConvNet)
            loss = F.cross_entropy(head(backbone.model(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if _spent(args, step, start):
                break
    bar.close()
    seconds = time.perf_counter() - start
    window = max(1, min(50, step // 4))
    first, last = _mean(losses[:window]), _mean(losses[-window:])
    log(f"{step} steps in {seconds:.0f} s; mean loss of the first {window} steps {first:.3f}, last {window} {last:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"method": "supervised-control", "encoder": "supervised", "label": f"supervised control {args.arch}",
            "eval": {**DEFAULT_EVAL, "feature": "cls" if backbone.is_vit else "avgpool"},
            "control": {"steps": step, "seconds": round(seconds, 1), "loss_window": window, "loss_first": first,
                        "loss_last": last,
                        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}}
    print(save_checkpoint(args.out / "checkpoint", backbone.eval(), meta))
    return 0


def _spent(args: argparse.Namespace, step: int, start: float) -> bool:
    return ((args.steps is not None and step >= args.steps)
            or (args.seconds is not None and time.perf_counter() - start >= args.seconds))


def _mean(values: list[float]) -> float:
    return round(sum(values) / max(1, len(values)), 4)


if __name__ == "__main__":
    raise SystemExit(main())
