"""Reading a classifier: per-image word attributions (:mod:`.attribution`) and word-weight views (:mod:`.viz`);
on the image side, sparse-autoencoder components (:mod:`.sae`), what they stand for (:mod:`.concepts`), which
of them drive a class score (:mod:`.components`: Act×Grad, Logit Lens, unexpected reliance) and how faithful
that attribution is (:mod:`.faithfulness`: cumulative deletion)."""
