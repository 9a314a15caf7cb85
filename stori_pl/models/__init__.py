"""LightningModules: SToRI and the baselines it is compared with."""

from stori_pl.models.base import ClipClassifier
from stori_pl.models.baselines import TaskRes, ZeroShotCLIP
from stori_pl.models.export import load_exported_classifier
from stori_pl.models.stori import StoriClassifier

__all__ = ["ClipClassifier", "StoriClassifier", "ZeroShotCLIP", "TaskRes", "load_exported_classifier"]
