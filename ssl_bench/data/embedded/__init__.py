"""Embedded benchmark data: every format ssl-bench reads, generated offline from real images.

``prepare(root, profile="tiny"|"demo", seed=0)`` (CLI: ``ssl-bench data prepare --root DIR``) writes::

    ROOT/ssl-bench-data.json                      manifest: profile, seed, generator version, libraries,
                                                  sources (Fashion-MNIST sha256 + licence, skimage.data
                                                  images + licences) and, per set, format, subfolder,
                                                  dataset_name, counts, classes and how it was made
    ROOT/imagenet/{train,val}/<wnid>/*.JPEG       classification (+ 1percent.txt, 10percent.txt,
                                                  imagenet_subsets{1,2,3}/{1,2,5}imgs_class.txt)
    ROOT/coco/{train2017,val2017}/*.jpg, annotations/instances_{train,val}2017.json
    ROOT/lvis/lvis_v1_{train,val}.json            (images: ROOT/coco, via coco_url)
    ROOT/ADEChallengeData2016/{images,annotations}/{training,validation}/
    ROOT/DAVIS/{JPEGImages,Annotations}/480p/<seq>/, ImageSets/2017/{train,val}.txt
    ROOT/imagenet-c/<corruption>/<severity>/<wnid>/   ROOT/imagenet-r/<wnid>/
    ROOT/imagenet-sketch/<wnid>/                      ROOT/imagenet-a/<wnid>/

Objects are real Fashion-MNIST items (Debian package dataset-fashion-mnist, MIT), colourised and pasted with
their exact masks onto crops of real photographs and textures from ``skimage.data`` (CC0 / public domain).
Class ids are synthetic WordNet-style ids ``n99000000 + label`` so the ImageNet loaders treat them like real
wnids. Sizes and counts come from ``ssl_bench/data/profiles/{base,tiny,demo}.yaml``. Every item is drawn from
its own generator seeded by (seed, set, index): the same seed gives byte-identical files with any number of
workers. The generated sets are reported as ``embedded-*`` (``embedded-c`` for the corruptions), never under
the names of the real datasets.
"""

from ..common import profile_names
from .prepare import GENERATOR_VERSION, load_profile, prepare, prepare_if_needed

__all__ = ["prepare", "prepare_if_needed", "load_profile", "profile_names", "GENERATOR_VERSION"]
