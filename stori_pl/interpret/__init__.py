"""Reading a classifier: per-image word attributions (:mod:`.attribution`) and word-weight views (:mod:`.viz`)."""
