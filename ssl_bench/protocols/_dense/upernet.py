"""UperNet for semantic segmentation on any of our backbones (default backend).

ViT: the outputs of blocks ``out_indices`` (0-based; MAE/BEiT mmseg configs use 3, 5, 7, 11,
taken before any final norm) become patch grids and go through ``Feature2Pyramid`` (mmseg
``necks/featurepyramid.py``: rescales 4x = two stride-2 transposed convs with BN + GELU between,
2x = one transposed conv, 1x = identity, 0.5x = 2x2 max-pool; channels kept). ResNet: the four
stages (strides 4-32) directly. The decoder is segmentation-models-pytorch's ``UPerNetDecoder``
(PPM on the coarsest map + FPN, fused at 1/4 resolution), followed by the mmseg ``cls_seg``
(Dropout2d 0.1 + 1x1 conv). The auxiliary head is mmseg's ``FCNHead`` (one 3x3 conv-BN-ReLU,
no input concat, Dropout2d 0.1, 1x1 conv) on pyramid level ``aux_in_index`` (2 = the 1x map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...progress import progress


class Feature2Pyramid(nn.Module):
    """mmseg ``Feature2Pyramid``: one rescaling op per input map."""

    def __init__(self, embed_dim: int, rescales=(4, 2, 1, 0.5)):
        super().__init__()
        ops = []
        for k in rescales:
            k = float(k)
            if k == 4:
                ops.append(nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2), nn.BatchNorm2d(embed_dim),
                                         nn.GELU(), nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2)))
            elif k == 2:
                ops.append(nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2))
            elif k == 1:
                ops.append(nn.Identity())
            elif k == 0.5:
                ops.append(nn.MaxPool2d(2, 2))
            elif k == 0.25:
                ops.append(nn.MaxPool2d(4, 4))
            else:
                raise UserError(f"recipe key 'model.rescales': {k} is not one of 4, 2, 1, 0.5, 0.25")
        self.ops = nn.ModuleList(ops)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip(self.ops, features, strict=True)]


class FCNHead(nn.Module):
    """mmseg ``FCNHead`` with num_convs=1, concat_input=False."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.dropout(self.conv(x)))


class UperNet(nn.Module):
    """Backbone (+ ViT neck) + smp ``UPerNetDecoder`` + cls_seg, and the FCN auxiliary head."""

    def __init__(self, backbone, num_classes: int, cfg: dict):
        super().__init__()
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder  # heavy: UperNet only

        self.backbone = backbone
        if backbone.is_vit:
            self.out_indices = [int(i) for i in cfg["out_indices"]]
            bad = [i for i in self.out_indices if not 0 <= i < backbone.depth]
            if bad or len(self.out_indices) != 4:
                raise UserError(f"recipe key 'model.out_indices': {cfg['out_indices']!r}; give 4 block indices "
                                f"in 0..{backbone.depth - 1} (MAE/BEiT: [3, 5, 7, 11])")
            self.neck = Feature2Pyramid(backbone.embed_dim, cfg["rescales"])
            channels = [backbone.embed_dim] * 4
        else:
            self.out_indices = [1, 2, 3, 4]
            self.neck = None
            channels = [backbone.model.feature_info[i]["num_chs"] for i in self.out_indices]
        width = int(cfg["channels"])
        # smp counts features from stride 1: its first two entries are skipped, so pad them
        self.decoder = UPerNetDecoder(encoder_channels=[3, 3, *channels], encoder_depth=5, decoder_channels=width)
        self.dropout = nn.Dropout2d(float(cfg["dropout"]))
        self.cls_seg = nn.Conv2d(width, num_classes, 1)
        self.aux_index = int(cfg["aux_in_index"])
        aux_channels = int(cfg["aux_channels"])
        self.aux_head = FCNHead(channels[self.aux_index], aux_channels, num_classes, float(cfg["dropout"])) \
            if float(cfg["aux_weight"]) > 0 else None

    def heads(self) -> list[nn.Module]:
        return [m for m in (self.neck, self.decoder, self.cls_seg, self.aux_head) if m is not None]

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.backbone.is_vit:
            return self.neck(self.backbone.patch_grid(images, blocks=self.out_indices))
        return list(self.backbone.model.forward_intermediates(images, indices=self.out_indices,
                                                              intermediates_only=True))

    def forward(self, images: torch.Tensor):
        feats = self.features(images)
        out = self.cls_seg(self.dropout(self.decoder([feats[0], feats[0], *feats])))
        aux = self.aux_head(feats[self.aux_index]) if (self.aux_head is not None and self.training) else None
        return out, aux

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores at the input resolution (mmseg ``encode_decode``: bilinear resize)."""
        out, _ = self(images)
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)


def seg_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """mmseg decode-head loss: logits resized (bilinear) to the label size, CE with ignore."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


@torch.no_grad()
def slide_inference(predict, image: torch.Tensor, num_classes: int, crop: tuple[int, int],
                    stride: tuple[int, int]) -> torch.Tensor:
    """mmseg ``EncoderDecoder.slide_inference`` for one normalised (C, H, W) image: windows of
    ``crop`` every ``stride`` (the last one flush with the border), logits summed and divided
    by the number of windows covering each pixel. An image smaller than the crop is run as it
    is (mmseg 1.x pads test images only when its preprocessor has a test size, the MAE/BEiT
    configs have none). ``predict`` returns logits at its input's size."""
    _, h, w = image.shape
    ch, cw = crop
    sh, sw = stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    total = torch.zeros((num_classes, h, w), dtype=torch.float32)
    count = torch.zeros((1, h, w), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * sh, c * sw
            y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            logits = predict(image[None, :, y1:y2, x1:x2])[0].float()
            total[:, y1:y2, x1:x2] += logits
            count[:, y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def predict_dataset(predict, dataset, num_classes: int, test_cfg: dict, desc: str = "segment"):
    """Yield (prediction (H, W) int64 at the label's resolution, label) for every sample:
    sliding-window logits, resized bilinearly to the original size, argmax (mmseg
    ``postprocess_result``)."""
    crop = tuple(int(v) for v in test_cfg["crop_size"])
    stride = tuple(int(v) for v in test_cfg["stride"])
    for i in progress(range(len(dataset)), desc=desc, unit="img"):
        image, label = dataset[i]
        if test_cfg.get("mode", "slide") == "slide":
            logits = slide_inference(predict, image, num_classes, crop, stride)
        else:
            logits = predict(image[None])[0].float()
        logits = F.interpolate(logits[None], size=label.shape[-2:], mode="bilinear", align_corners=False)[0]
        yield logits.argmax(0), label
