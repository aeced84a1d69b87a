"""Evaluation metrics shared by the protocols (numpy only, no model code).

``segmentation``  mmseg IoUMetric: per-class intersection/union histograms summed over a set, mIoU
``davis``         DAVIS-2017 semi-supervised J (region IoU) and F (boundary F-measure), mean/recall/decay
``robustness``    ImageNet-C corruption errors, CE and mCE normalised by AlexNet (Hendrycks & Dietterich)
"""
