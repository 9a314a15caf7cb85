"""Reading a classifier: per-image word attributions (:mod:`.attribution`) and word-weight views (:mod:`.viz`);
on the image side, sparse-autoencoder components (:mod:`.sae`) and what they stand for (:mod:`.concepts`)."""
