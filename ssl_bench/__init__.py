"""ssl-bench: pretraining and evaluation suite for masked siamese self-supervised vision methods."""

__version__ = "0.1.0"
