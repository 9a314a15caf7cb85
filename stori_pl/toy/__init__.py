"""The toy world: a procedural image world whose attributes are known exactly (:mod:`.world`), its two
benchmarks (:mod:`.data`), the recipe of the shipped tiny CLIP ``stori-toy`` (:mod:`.pretrain`) and the
notebook helpers (:mod:`.quickstart`)."""
