"""LightningModules: SToRI and the baselines it is compared with (each cites the official code it follows), and
the sparse autoencoder of the image-side components (:mod:`.sae`)."""

from stori_pl.models.base import ClipClassifier
from stori_pl.models.baselines import TaskRes, ZeroShotCLIP
from stori_pl.models.checkpoint import load_checkpoint
from stori_pl.models.coop import CoOp
from stori_pl.models.export import load_exported_classifier
from stori_pl.models.intcoop import IntCoOp
from stori_pl.models.linear_probe import LinearProbe
from stori_pl.models.sae import SparseAutoencoder
from stori_pl.models.stori import StoriClassifier
from stori_pl.models.tip_adapter import TipAdapter

__all__ = ["ClipClassifier", "StoriClassifier", "ZeroShotCLIP", "TaskRes", "CoOp", "IntCoOp", "TipAdapter",
           "LinearProbe", "SparseAutoencoder", "load_checkpoint", "load_exported_classifier"]
