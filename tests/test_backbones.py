"""The backbone feature API checked against timm's own forward passes, for a plain ViT-Tiny and
the conv-stem ViT-Tiny (which must behave as a ViT with patch 16 in every respect)."""

import pytest
import timm
import torch

from ssl_bench.backbones import Backbone
from ssl_bench.errors import UserError

ARCH = "vit_tiny_patch16_224"


@pytest.fixture(scope="module", params=[ARCH, "vit_tiny_convstem_patch16_224"])
def pair(request):
    """Our backbone and an independent timm model holding the same weights."""
    torch.manual_seed(0)
    ours = Backbone(request.param, img_size=64, patch_size=16, mask_token=True).eval()
    reference = timm.create_model(request.param, pretrained=False, num_classes=0, img_size=64,
                                  dynamic_img_size=True).eval()
    reference.load_state_dict(ours.model.state_dict())
    assert ours.patch_size == 16
    return ours, reference


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def test_cls_and_patch_tokens_match_timm(pair, images):
    ours, reference = pair
    expected = reference.forward_features(images)  # (B, 1 + 16, C), after the final norm
    out = ours.tokens(images)
    assert torch.allclose(out.cls, expected[:, 0], atol=1e-6)
    assert torch.allclose(out.patches, expected[:, 1:], atol=1e-6)
    assert torch.allclose(ours.features(images, "cls"), expected[:, 0], atol=1e-6)
    assert torch.allclose(ours.features(images, "avgpool"), expected[:, 1:].mean(1), atol=1e-6)
    grid = ours.patch_grid(images)[0]
    assert torch.allclose(grid, expected[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4), atol=1e-6)


@torch.no_grad()
def test_intermediate_blocks_match_timm(pair, images):
    ours, reference = pair
    maps = reference.forward_intermediates(images, indices=[3, 5, 7, 11], norm=False,
                                           intermediates_only=True)  # NCHW
    for got, want in zip(ours.patch_grid(images, blocks=[3, 5, 7, 11]), maps):
        assert torch.allclose(got, want, atol=1e-6)
    tokens = reference.forward_intermediates(images, indices=[11], norm=False, output_fmt="NLC",
                                             return_prefix_tokens=True, intermediates_only=True)
    patches, prefix = tokens[0]
    assert torch.allclose(ours.tokens(images).cls_prenorm, prefix[:, 0], atol=1e-6)
    last4 = reference.forward_intermediates(images, indices=4, norm=True, output_fmt="NLC",
                                            return_prefix_tokens=True, intermediates_only=True)
    expected = torch.cat([pre[:, 0] for _, pre in last4], dim=-1)
    assert torch.allclose(ours.features(images, "cls_last4"), expected, atol=1e-6)


@torch.no_grad()
def test_patch_drop_equals_forward_over_kept_tokens(pair, images):
    ours, reference = pair
    keep = torch.tensor([[0, 5, 9, 15], [2, 3, 4, 12]])
    embedded = reference._pos_embed(reference.patch_embed(images))  # (B, 1 + 16, C)
    kept = torch.stack([torch.cat([embedded[i, :1], embedded[i, 1:][keep[i]]]) for i in range(2)])
    expected = reference.norm(reference.blocks(kept))
    assert torch.allclose(ours.tokens(images, keep=keep).normed, expected, atol=1e-6)
    shared = torch.tensor([1, 7, 8])  # one index set for the whole batch (MSN)
    assert torch.allclose(ours.tokens(images, keep=shared).normed,
                          ours.tokens(images, keep=shared.expand(2, -1)).normed, atol=1e-6)


def test_cls_alone_through_the_last_block_matches_timm_with_gradients(pair, images):
    """prefix_only computes the last block for the CLS token alone: its value and every
    gradient equal timm's full forward read at the CLS token."""
    ours, reference = pair
    keep = torch.tensor([1, 6, 7, 10, 14])
    embedded = reference._pos_embed(reference.patch_embed(images))
    kept = torch.cat([embedded[:, :1], embedded[:, 1:][:, keep]], dim=1)
    weights = torch.randn(192, generator=torch.Generator().manual_seed(5))
    want_cls = reference.norm(reference.blocks(kept))[:, 0]
    (want_cls @ weights).sum().backward()
    out = ours.tokens(images, keep=keep, prefix_only=True)
    assert out.normed.shape == (2, 1, 192)  # the prefix alone
    assert torch.allclose(out.cls, want_cls, atol=1e-6)
    (out.cls @ weights).sum().backward()
    theirs = dict(reference.named_parameters())
    for name, param in ours.model.named_parameters():
        if theirs[name].grad is None:
            assert param.grad is None or not param.grad.any(), name
        else:
            want = theirs[name].grad  # equal up to float rounding, relative to the gradient's size
            assert (param.grad - want).norm() <= 1e-5 * want.norm(), name
    last = ours.model.blocks[-1]
    assert last.mlp.fc1.weight.grad.abs().sum() > 0 and last.attn.qkv.weight.grad[192:].abs().sum() > 0
    ours.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="no patch tokens"):
        out.patches


@torch.no_grad()
def test_mask_token_replaces_patches_before_position_embedding(pair, images):
    ours, _ = pair
    none = torch.zeros(2, 16, dtype=torch.bool)
    assert torch.allclose(ours.tokens(images, mask=none).normed, ours.tokens(images).normed, atol=1e-6)
    everything = torch.ones(2, 4, 4, dtype=torch.bool)
    other = torch.randn(2, 3, 64, 64)
    # With every patch masked the input no longer matters: only mask token + positions remain.
    assert torch.allclose(ours.tokens(images, mask=everything).normed,
                          ours.tokens(other, mask=everything).normed, atol=1e-6)
    one = none.clone()
    one[0, 6] = True
    changed = (ours.tokens(images, mask=one).prenorm - ours.tokens(images).prenorm).abs().sum(-1)
    assert changed[1].max() == 0 and changed[0].min() > 0  # only image 0 is touched


@torch.no_grad()
def test_any_image_size_interpolates_position_embeddings(pair):
    ours, reference = pair
    wide = torch.randn(1, 3, 48, 96)
    out = ours.tokens(wide)
    assert out.grid == (3, 6)
    assert torch.allclose(out.normed, reference.forward_features(wide), atol=1e-6)


@torch.no_grad()
def test_patch8_and_no_final_norm():
    small = Backbone("vit_small_patch16_224", img_size=32, patch_size=8, final_norm=False).eval()
    out = small.tokens(torch.randn(1, 3, 32, 32))
    assert out.grid == (4, 4) and small.patch_size == 8
    assert torch.equal(out.normed, out.prenorm)


@torch.no_grad()
def test_resnet50_pooled_features_match_timm():
    torch.manual_seed(0)
    ours = Backbone("resnet50").eval()
    reference = timm.create_model("resnet50", pretrained=False, num_classes=0).eval()
    reference.load_state_dict(ours.model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours.features(x, "avgpool"), reference(x), atol=1e-5)
    last = ours.patch_grid(x)[0]
    assert last.shape == (2, 2048, 2, 2)
    assert torch.allclose(last.mean((2, 3)), reference(x), atol=1e-5)


# ----- BEiT (ConMIM's backbone) ---------------------------------------------------------------
BEIT = "beit_tiny_patch16_224"


def _beit_reference(img_size: int):
    """timm's own BEiT at ``img_size`` with the final norm on every token (as Backbone builds it)."""
    return timm.create_model(BEIT, pretrained=False, num_classes=0, img_size=img_size, use_fc_norm=False).eval()


@pytest.fixture(scope="module")
def beit():
    """A BEiT backbone at 64 px (4x4 window) with random, non-zero relative position tables."""
    torch.manual_seed(0)
    ours = Backbone(BEIT, img_size=64, patch_size=16, mask_token=True).eval()
    with torch.no_grad():
        for block in ours.model.blocks:
            block.attn.relative_position_bias_table.normal_(0, 1.0)
            block.gamma_1.uniform_(0.5, 1.5)
    return ours


def sub_table(table: torch.Tensor, window: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The BEiT table of a smaller grid, entry by entry: offset (dy, dx) lives at row
    (dy + H - 1) * (2W - 1) + dx + W - 1 of a table for an H x W window; the 3 CLS rows follow."""
    (big_h, big_w), (h, w) = window, grid
    rows = [table[(dy + big_h - 1) * (2 * big_w - 1) + dx + big_w - 1]
            for dy in range(-(h - 1), h) for dx in range(-(w - 1), w)]
    return torch.cat([torch.stack(rows), table[-3:]])


@torch.no_grad()
def test_beit_tokens_match_timm_at_its_size(beit, images):
    reference = _beit_reference(64)
    reference.load_state_dict(beit.model.state_dict())
    out = beit.tokens(images, blocks=[3, 11])
    assert torch.allclose(out.normed, reference.forward_features(images), atol=1e-5)
    maps = reference.forward_intermediates(images, indices=[3, 11], norm=False, intermediates_only=True)
    for got, want in zip(beit.patch_grid(images, blocks=[3, 11]), maps):
        assert torch.allclose(got, want, atol=1e-5)
    assert beit.features(images, "cls_last4").shape == (2, 4 * 192)
    everything = torch.ones(2, 16, dtype=torch.bool)
    assert torch.allclose(beit.tokens(images, mask=everything).normed,
                          beit.tokens(torch.randn(2, 3, 64, 64), mask=everything).normed, atol=1e-6)


@torch.no_grad()
def test_beit_cls_alone_runs_its_last_block_whole(beit, images):
    assert torch.equal(beit.tokens(images, prefix_only=True).cls, beit.tokens(images).cls)


@torch.no_grad()
def test_beit_smaller_grid_reads_its_offsets_from_the_table(beit):
    small = _beit_reference(32)  # 2x2 window
    state = dict(beit.model.state_dict())
    for i in range(beit.depth):
        key = f"blocks.{i}.attn.relative_position_bias_table"
        state[key] = sub_table(state[key], (4, 4), (2, 2))
    small.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(beit.tokens(x).normed, small.forward_features(x), atol=1e-5)


@torch.no_grad()
def test_beit_larger_grid_resizes_tables_as_timm_does(beit):
    reference = _beit_reference(64)
    reference.load_state_dict(beit.model.state_dict())
    reference.set_input_size(img_size=(96, 96))  # timm resizes every table (BEiT's rule)
    x = torch.randn(2, 3, 96, 96)
    assert torch.allclose(beit.tokens(x).normed, reference.forward_features(x), atol=1e-4)


def test_beit_shared_bias_is_exported_per_block_and_trains():
    torch.manual_seed(0)
    shared = Backbone(BEIT, img_size=64, patch_size=16, shared_rel_pos_bias=True)
    table = shared.model.rel_pos_bias.relative_position_bias_table
    with torch.no_grad():
        table.normal_()
    state = shared.encoder_state_dict()
    assert "rel_pos_bias.relative_position_bias_table" not in state
    assert torch.equal(state["blocks.7.attn.relative_position_bias_table"], table)
    plain = _beit_reference(64)
    plain.load_state_dict(state)  # timm's own per-block layout
    x = torch.randn(2, 3, 64, 64)
    shared.eval()
    with torch.no_grad():
        assert torch.allclose(shared.tokens(x).normed, plain.forward_features(x), atol=1e-5)
    shared.train()
    shared.tokens(torch.randn(2, 3, 32, 32)).normed.sum().backward()  # another grid: still differentiable
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_beit_refuses_patch_drop(beit, images):
    with pytest.raises(UserError, match="patch drop"):
        beit.tokens(images, keep=torch.tensor([0, 1]))
