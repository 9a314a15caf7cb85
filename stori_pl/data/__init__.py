"""Datamodules of the few-shot benchmarks (CoOp splits, CuPL prompts, cached CLIP image features), and the
activation data of sparse autoencoders (:mod:`.activations`)."""

from stori_pl.data.activations import ActivationData
from stori_pl.data.base import FewShotDataModule
from stori_pl.data.containers import FeatureDataset, PromptSet
from stori_pl.data.caltech101 import Caltech101
from stori_pl.data.dtd import DTD
from stori_pl.data.few_shot_folder import FewShotImageFolder
from stori_pl.data.flowers102 import Flowers102
from stori_pl.data.food101 import Food101
from stori_pl.data.image_folder import ImageFolder
from stori_pl.data.imagenet import ImageNet
from stori_pl.data.sun397 import SUN397

__all__ = ["FewShotDataModule", "PromptSet", "FeatureDataset", "ImageNet", "DTD", "SUN397", "Flowers102",
           "Caltech101", "Food101", "ImageFolder", "FewShotImageFolder",
           "ActivationData"]
