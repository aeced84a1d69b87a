"""Layouts of the self-supervised releases: MSN, MAE, SiameseIM, DINO, iBOT, MoCo v3, DINOv2, ConMIM.

Their ViTs descend from timm's (ConMIM's from BEiT's, which timm's BEiT follows) and keep its names (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``); what
differs is where the encoder sits in the checkpoint, what else is stored beside it, and a few
renamed parts. Each table below is written from the official repository's model and training code
(named in ``source``); the default encoder is the one each paper's evaluation code loads.
"""

from __future__ import annotations

import re

from .core import ROOT, Encoder, Layout

_MODULE = ("module.",)


def _same(key: str, target: dict) -> str:
    return key


MSN = Layout(
    name="msn", source="facebookresearch/msn src/msn_train.py (save_dict), src/deit.py",
    encoders={"target": Encoder(("target_encoder",), _MODULE),
              "online": Encoder(("encoder",), _MODULE)},
    default_encoder="target",
    why_default="MSN's logistic_eval.py and linear_eval.py load checkpoint['target_encoder']",
    marks=(r"^target_encoder/(module\.)?blocks\.0\.",),
    ignore={"fc.*": "MSN projection head", "module.fc.*": "MSN projection head"},
    eval={"feature": "cls_prenorm"})  # as ssl-bench's MSN checkpoints (defaults/pretrain/msn.yaml)

_MAE_DECODER = {"decoder_*": "MAE decoder", "mask_token": "decoder mask token"}

MAE = Layout(
    name="mae", source="facebookresearch/mae models_mae.py, util/misc.py save_model ('model')",
    encoders={"encoder": Encoder(("model", ROOT), _MODULE)},
    default_encoder="encoder", why_default="the file holds one encoder (MAE has no momentum encoder)",
    marks=(r"(^|/)(module\.)?decoder_embed\.weight$",), unmarks=(r"(^|/)mm_blocks\.",),
    ignore={**_MAE_DECODER, "head.*": "classification head of a fine-tuned model"},
    eval={"feature": "cls"})  # main_linprobe.py: CLS token after the final norm

_SIM_ONLINE = {"patch_embed.*": "online encoder (not chosen)", "cls_token": "online encoder (not chosen)",
               "blocks.*": "online encoder (not chosen)"}

SIAMESEIM = Layout(
    name="siameseim",
    source="OpenGVLab/Siamese-Image-Modeling models_sim.py (SiameseIMViT, build_momentum_target)",
    encoders={"online": Encoder(("model",), ignore={"mm_*": "momentum encoder and heads (not chosen)"}),
              "momentum": Encoder(("model",), prefixes=("mm_",), ignore=_SIM_ONLINE)},
    default_encoder="online",
    why_default="main_linprobe.py and main_finetune.py load checkpoint['model'] into the online ViT",
    marks=(r"^model/mm_blocks\.0\.",),
    ignore={**_MAE_DECODER, "mm_decoder_embed.*": "momentum decoder", "mm_mask_token": "momentum decoder",
            "mm_projector_decoder_blocks.*": "momentum projector", "projector_decoder_blocks.*": "projector",
            "predictor_decoder_blocks.*": "predictor", "student_norm.*": "predictor norm"},
    backbone_options=lambda renamed: {"final_norm": False},  # SiameseIMViT has no encoder norm
    eval={"feature": "avgpool"})  # as ssl-bench's SiameseIM checkpoints (configs/linprobe: --global_pool)

_DINO_HEADS = {"head.*": "DINO head", "module.head.*": "DINO head"}
_BACKBONE = ("module.backbone.", "backbone.")


def _layer_scale(key: str, target: dict) -> str:
    """iBOT's ``gamma_1``/``gamma_2`` are timm's ``ls1.gamma``/``ls2.gamma``."""
    return re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)


DINO = Layout(
    name="dino", source="facebookresearch/dino main_dino.py (save_dict), vision_transformer.py, utils.py",
    encoders={"teacher": Encoder(("teacher",), _BACKBONE), "student": Encoder(("student",), _BACKBONE)},
    default_encoder="teacher", why_default="DINO's eval_knn.py and eval_linear.py: --checkpoint_key teacher",
    marks=(r"^teacher/(module\.)?backbone\.",), unmarks=(r"last_layer2", r"masked_embed", r"dino_head"),
    ignore=_DINO_HEADS, eval={"feature": "cls"})

IBOT = Layout(
    name="ibot", source="bytedance/ibot main_ibot.py (save_dict), models/vision_transformer.py, models/head.py",
    encoders={"teacher": Encoder(("teacher", "state_dict"), _BACKBONE),
              "student": Encoder(("student",), _BACKBONE)},
    default_encoder="teacher", why_default="iBOT's evaluation scripts: --checkpoint_key teacher",
    marks=(r"^(teacher|state_dict)/((module\.)?backbone\.)?(masked_embed|blocks\.0\.)",
           r"(last_layer2|masked_embed)"),
    ignore={**_DINO_HEADS, "masked_embed": "mask token of masked image modelling",
            "module.backbone.masked_embed": "mask token", "backbone.masked_embed": "mask token"},
    rename=_layer_scale, eval={"feature": "cls"})


def _moco_arch(arch: str) -> str | None:
    if arch.startswith("vit_small"):
        return ("MoCo v3's ViT-S has 12 attention heads (moco-v3 vits.py) and timm's vit_small_* has 6: "
                "the weights would load with equal shapes and compute something else")
    return None


_MOCO_SHARED = {"module.predictor.*": "MoCo v3 predictor"}

MOCO_V3 = Layout(
    name="moco_v3", source="facebookresearch/moco-v3 moco/builder.py, vits.py, convert_to_deit.py",
    encoders={"base": Encoder(("state_dict", ROOT), ("module.base_encoder.",),
                              ignore={"module.momentum_encoder.*": "momentum encoder (not chosen)",
                                      "module.base_encoder.head.*": "projector (ViT)",
                                      "module.base_encoder.fc.*": "projector (ResNet)"}),
              "momentum": Encoder(("state_dict", ROOT), ("module.momentum_encoder.",),
                                  ignore={"module.base_encoder.*": "base encoder (not chosen)",
                                          "module.momentum_encoder.head.*": "projector (ViT)",
                                          "module.momentum_encoder.fc.*": "projector (ResNet)"})},
    default_encoder="base",
    why_default="MoCo v3's main_lincls.py and convert_to_deit.py keep module.base_encoder",
    marks=(r"(^|/)module\.base_encoder\.",), ignore=_MOCO_SHARED, check_arch=_moco_arch,
    eval={"feature": "cls"})


def _dinov2_name(key: str, target: dict) -> str:
    key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)  # BlockChunk: global index inside a chunk
    key = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", key)  # SwiGLU (ViT-g): timm's packed SwiGLU names
    key = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", key)
    return "reg_token" if key == "register_tokens" else key


def _dinov2_registers(state: dict, backbone) -> list[str]:
    """DINOv2 adds the position embedding to [CLS, patches] and inserts the registers after it;
    timm's register models keep no CLS position (``no_embed_class``): fold it into ``cls_token``."""
    if not getattr(backbone.model, "no_embed_class", False) or "pos_embed" not in state:
        return []
    state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
    state["pos_embed"] = state["pos_embed"][:, 1:]
    return ["cls_token += pos_embed[:, 0]; pos_embed drops its CLS position (timm no_embed_class)"]


DINOV2 = Layout(
    name="dinov2",
    source="facebookresearch/dinov2 dinov2/models/vision_transformer.py, layers/block.py, train/ssl_meta_arch.py",
    encoders={"teacher": Encoder(("teacher", "model", ROOT), ("teacher.backbone.", "backbone."),
                                 ignore={"student.*": "student (not chosen)"}),
              "student": Encoder(("student", "model"), ("student.backbone.", "backbone."),
                                 ignore={"teacher.*": "teacher (not chosen)"})},
    default_encoder="teacher", why_default="dinov2/eval/setup.py loads the 'teacher' weights",
    marks=(r"(ls1\.gamma|register_tokens)$", r"(^|\.|/)mask_token$"),
    ignore={"mask_token": "mask token", "*dino_head.*": "DINO head", "*ibot_head.*": "iBOT head",
            "backbone.mask_token": "mask token", "teacher.backbone.mask_token": "mask token",
            "student.backbone.mask_token": "mask token"},
    rename=_dinov2_name, convert=_dinov2_registers, eval={"feature": "cls"})


def _shared_bias(renamed: dict) -> dict:
    """ConMIM pretrains with one relative position bias for all blocks (use_shared_rel_pos_bias)."""
    return {"shared_rel_pos_bias": "rel_pos_bias.relative_position_bias_table" in renamed}


CONMIM = Layout(
    name="conmim",
    source="TencentARC/ConMIM modeling_pretrain.py, run_conmim_pretraining.py, utils.py save_model",
    encoders={"model": Encoder(("model", "module", ROOT), _MODULE)},
    default_encoder="model",
    why_default=("run_class_finetuning.py fine-tunes checkpoint-N.pth's 'model' (ConMIM saves its momentum "
                 "teacher to a separate checkpoint_copy-N.pth, importable the same way)"),
    marks=(r"(^|/)(module\.)?blocks\.0\.attn\.q_bias$",),
    ignore={"mask_token": "mask token", "lm_head.*": "language-model head", "projectors.*": "MLP projectors",
            "*relative_position_index": "index buffer, rebuilt from the grid", "head.*": "classifier"},
    backbone_options=_shared_bias,
    eval={"feature": "avgpool"})  # as ssl-bench's ConMIM checkpoints (defaults/pretrain/conmim.yaml)

LAYOUTS = (SIAMESEIM, MAE, MSN, IBOT, DINO, DINOV2, MOCO_V3, CONMIM)
