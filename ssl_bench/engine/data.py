"""The training data of a pretraining run, in a resumable order.

Every sample's views are drawn from an RNG seeded by (seed, epoch, index), and the order is a
DistributedSampler-style permutation seeded by (seed + epoch), so a run resumed at any step
sees exactly the batches and views an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.imagefolder import ImageFolderDataset
from ..data.loading import make_loader
from ..data.resolve import resolve
from ..errors import UserError
from ..seeding import sample_seed, seeded


def image_folder_root(root: Path, split: str) -> Path:
    """The class-folder root of ``split`` under a data root: the ImageNet set of a real or
    prepared tree (``ssl_bench.data.resolve``), else ROOT/imagenet/SPLIT, ROOT/SPLIT or ROOT."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data.root {root}: no such folder; create the embedded data with "
                        f"'ssl-bench data prepare --root {root} --profile demo' or set --set data.root=DIR")
    try:
        candidate = Path(resolve(root, "imagenet")) / split
        if candidate.is_dir():
            return candidate
    except UserError:
        pass  # not a real/embedded ImageNet tree: try the plain layouts below
    for candidate in (root / "imagenet" / split, root / split, root):
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            return candidate
    raise UserError(f"data.root {root}: no ImageFolder found (looked for imagenet/{split}/<class>/*, "
                    f"{split}/<class>/*, <class>/*)")


def training_images(recipe: dict, transform) -> ImageFolderDataset:
    """The recipe's training split, each image through ``transform`` (the method's views)."""
    d = recipe["data"]
    return ImageFolderDataset(image_folder_root(Path(d["root"]), d["split"]), transform)


class SeededViews(torch.utils.data.Dataset):
    """The views of sample ``index`` in ``epoch``, drawn under a seed of (seed, epoch, index)."""

    def __init__(self, images: ImageFolderDataset, seed: int):
        self.images, self.seed = images, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, index = key
        with seeded(sample_seed(self.seed, epoch, index)):
            return self.images[index][0]


class EpochOrder:
    """DistributedSampler-style order: a permutation seeded by (seed + epoch), the tail that
    does not split evenly dropped, rank r taking every world-th index; whole batches only."""

    def __init__(self, size: int, batch_size: int, world: int, rank: int, seed: int):
        self.size, self.batch_size, self.world, self.rank, self.seed = size, batch_size, world, rank, seed
        self.per_rank = size // world
        self.ipe = self.per_rank // batch_size

    def batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
        gen = torch.Generator()
        gen.manual_seed(self.seed + epoch)
        perm = torch.randperm(self.size, generator=gen)[: self.per_rank * self.world]
        mine = perm[self.rank::self.world].tolist()
        return [[(epoch, i) for i in mine[b * self.batch_size:(b + 1) * self.batch_size]]
                for b in range(start, self.ipe)]


def epoch_loader(dataset: SeededViews, order: EpochOrder, epoch: int, start: int, recipe: dict,
                 device: torch.device) -> torch.utils.data.DataLoader:
    """The batches of ``epoch`` from batch ``start`` on, decoded by the recipe's workers."""
    d = recipe["data"]
    return make_loader(dataset, batch_sampler=order.batches(epoch, start), workers=d["num_workers"],
                       pin_memory=d["pin_memory"] and device.type == "cuda",
                       generator=torch.Generator().manual_seed(sample_seed(recipe["seed"], epoch, 7)),
                       prefetch_factor=2)


def to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
