"""The toy world: a procedural image world whose attributes are known exactly (:mod:`.world`), its two
benchmarks (:mod:`.data`), the recipe of the shipped tiny CLIP ``stori-toy`` (:mod:`.pretrain`), many random
toy images for sparse autoencoders (:mod:`.images`).

Importing the package registers the toy world in the library's registries (the library never imports it):
the ``toy`` image source of :class:`~stori_pl.data.activations.ActivationData` and the ground truth of the
explanation metrics (:data:`TOY_GROUND_TRUTH`, :data:`stori_pl.interpret.metrics.GROUND_TRUTHS`).
"""

from stori_pl.data.activations import IMAGE_SOURCES
from stori_pl.interpret.metrics import GROUND_TRUTHS, GroundTruth
from stori_pl.toy.images import toy_images_folder, write_toy_images
from stori_pl.toy.world import ATTRIBUTES

TOY_GROUND_TRUTH = GroundTruth(
    attributes=ATTRIBUTES,
    class_attributes=("pattern", "color", "shape"),  # the order of the words in a toy class name
    nuisance_attributes=("size", "background"),
    synonyms={"striped": ("stripes", "stripe"), "dotted": ("dots", "dot")},
    sink_words=frozenset({"background"}),
    distractor_marker=("next", "to"),  # ToyShapesSpurious's sentences end "... next to a small green square." (toy_cupl)
)
GROUND_TRUTHS["toy"] = TOY_GROUND_TRUTH


def toy_activation_images(datamodule) -> tuple[list, list[dict[str, str]]]:
    """``images: toy`` of :class:`~stori_pl.data.activations.ActivationData`: ``n_images`` toy images of ``seed``
    written once under ``root``; returns ``(paths, per-image attributes)``."""
    folder = toy_images_folder(datamodule.root, datamodule.n_images, datamodule.seed)
    return write_toy_images(folder, datamodule.n_images, datamodule.seed)


IMAGE_SOURCES["toy"] = toy_activation_images
