"""Fine-tuning on the 1% ImageNet subset (Barlow Twins evaluate.py ``--weights finetune
--train-percent 1``, also used by MSCN).

The whole network trains on the images of a SimCLR subset file (``1percent.txt``) with SGD
(momentum 0.9), separate learning rates for the backbone (0.005) and the new linear
classifier (0.5), no weight decay, batch 256, 20 epochs, cosine annealing stepped per epoch,
RandomResizedCrop + flip, BatchNorm in train mode; val: resize 256 + centre crop 224; the
maximum val top-1 over epochs is reported. Not to be confused with the frozen logistic
regression on the same file (``lowshot``, metric ``top1_1pct``), which SiameseIM's table
calls "1% FT".
"""

from __future__ import annotations

from ..data.imagefolder import ImageFolderDataset
from ..errors import UserError
from ..schema import Schema
from . import PROTOCOLS
from ._finetuning import FINETUNE_METRICS, FineTuning, classifier_params


@PROTOCOLS.register("finetune_1pct")
class FineTune1Pct(FineTuning):
    """Fine-tune backbone + classifier on a subset file (Barlow Twins semi-supervised)."""

    schema = Schema(datasets=("imagenet",), metrics=FINETUNE_METRICS, headline=("top1",), order=40)

    def train_set(self, data, recipe: dict, transform):
        subset_file = data.root / recipe["subset_file"]
        if not subset_file.is_file():
            raise UserError(f"{subset_file}: subset file missing (recipe key 'subset_file', SimCLR format: one "
                            "training file name per line)")
        return ImageFolderDataset.from_subset_file(data.root / recipe["train_split"], subset_file, transform)

    def param_groups(self, model, recipe: dict) -> tuple[list[dict], dict]:
        head, backbone = classifier_params(model)
        optim = recipe["optim"]
        wd = float(optim["weight_decay"])
        # Barlow Twins: param_groups = [classifier at lr_classifier, backbone at lr_backbone], no lr scaling
        groups = [{"params": head, "base_lr": float(optim["lr_classifier"]), "min_lr": 0.0, "weight_decay": wd},
                  {"params": backbone, "base_lr": float(optim["lr_backbone"]), "min_lr": 0.0, "weight_decay": wd}]
        return groups, {"subset_file": recipe["subset_file"], "lr_backbone": groups[1]["base_lr"],
                        "lr_classifier": groups[0]["base_lr"]}
