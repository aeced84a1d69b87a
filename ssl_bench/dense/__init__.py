"""Parts the trained dense protocols share (ADE20k UperNet, COCO/LVIS Mask R-CNN).

``common``       LayerNorm2d, layer-decay AdamW groups (timm), warmup+poly / warmup+multistep
                 schedules, drop-path on an existing backbone, seeding
``transforms``   the training pipelines (mmseg ADE20k pipeline; ViTDet large-scale jitter)
``upernet``      ViT multi-level neck (Feature2Pyramid, 4x/2x/1x/0.5x), UperNet model on
                 segmentation-models-pytorch's ``UPerNetDecoder``, FCN auxiliary head,
                 sliding-window inference
``maskrcnn``     ViTDet backbone (window attention + global blocks, simple feature pyramid),
                 ResNet-50 C4 / FPN, Mask R-CNN on ``torchvision.models.detection``
``sampling``     LVIS repeat-factor sampling (detectron2 RepeatFactorTrainingSampler)
``coco_eval``    COCO (pycocotools) and LVIS (lvis) evaluation of torchvision-format outputs
``mm``           the OpenMMLab backends (mmseg EncoderDecoder, mmdet Mask R-CNN) built from
                 generated configs with our backbone plugged in; imported only when asked for
"""
