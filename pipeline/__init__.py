"""STARS pipeline: MAMP pretraining + nearest-neighbour contrastive tuning for 3D skeletons."""

__version__ = "0.1.0"
