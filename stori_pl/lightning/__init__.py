"""Lightning glue: the ``stori fit/validate/test/predict`` CLI (:mod:`.cli`), callbacks (:mod:`.callbacks`) and the
CSV prediction writer (:mod:`.prediction_writer`)."""
