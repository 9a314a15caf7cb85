"""Retrieval with weighted prompts: metrics (:mod:`.metrics`: AP, P@k, ratio curves, AUC, plots), attribute
datasets (:mod:`.attributes`: CelebA, CUB, CSV) and the preference-retrieval protocol (:mod:`.runner`, Table 3)."""

from stori_pl.retrieval.metrics import *  # noqa: F401,F403  (the metrics were ``stori_pl.retrieval`` before 0.2)
from stori_pl.retrieval.metrics import __all__ as _metrics_all

__all__ = list(_metrics_all)
