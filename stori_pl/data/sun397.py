"""SUN397 (397 scene classes) in CoOp's layout."""

from __future__ import annotations

from pathlib import Path

from stori_pl.data.base import FewShotDataModule
from stori_pl.data.cupl import cupl_url, paren_to_prefix


class SUN397(FewShotDataModule):
    """SUN397: ``<root>/sun397/SUN397/<letter>/<scene>[/<kind>]/sun_*.jpg`` + ``split_zhou_SUN397.json``.

    CoOp names a class from its folder path reversed: ``/a/apse/indoor`` -> "indoor apse". CuPL's keys
    put the kind in brackets ("apse (indoor)"), rewritten by ``cupl_key_rule``.
    Images (37 GB): https://vision.princeton.edu/projects/2010/SUN/ (torchvision).
    """

    folder = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    split_gdrive_id = "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"
    templates = ("a photo of a {}.",)
    cupl_default = cupl_url("sun_prompts_full.json")
    cupl_key_rule = staticmethod(paren_to_prefix)

    @staticmethod
    def coop_classname(path: str) -> str:
        """CoOp's class name of a ``ClassName.txt`` entry: ``/a/apse/indoor`` -> ``indoor apse``."""
        return " ".join(path.strip().strip("/").split("/")[1:][::-1])

    def download_images(self, dataset_dir: Path) -> None:
        self._tv_download(dataset_dir, "SUN397", "SUN397")
