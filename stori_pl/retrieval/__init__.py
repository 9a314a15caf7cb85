"""Retrieval with weighted prompts: metrics (:mod:`.metrics`: AP, P@k, ratio curves, AUC, plots), attribute
datasets (:mod:`.attributes`: CelebA, CUB, CSV) and the preference-retrieval protocol (:mod:`.runner`, Table 3)."""
