"""The models and pipelines of the trained dense protocols (``detection``: COCO/LVIS Mask R-CNN,
``segmentation``: ADE20k UperNet); their schedules are ``ssl_bench.schedules``, their layer-decay
groups ``_finetuning.layer_decay_groups``.

``common``       LayerNorm2d, the optimiser, lr setting, drop-path on an existing backbone
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
