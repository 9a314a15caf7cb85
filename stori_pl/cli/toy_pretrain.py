"""Train the tiny `stori-toy` CLIP on the procedural toy world (CPU, ~45 min on one core with the defaults).

Writes ``<out>.safetensors`` (fp16 weights) and ``<out>.json`` (provenance). The defaults are the recipe of
the shipped weights.

Example::

    stori toy-pretrain --steps 700 --seed 0 --out /tmp/stori-toy
"""

from __future__ import annotations

from pathlib import Path

from stori_pl.cli.common import command_parser, function_kwargs
from stori_pl.toy.pretrain import ToyTrainConfig, train

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "stori-toy"


def build_parser():
    """Options of ``stori toy-pretrain``: the fields of :class:`stori_pl.toy.pretrain.ToyTrainConfig` and ``--out``."""
    p = command_parser("stori toy-pretrain", __doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="Output path stem (.safetensors / .json are appended); default: the shipped asset.")
    p.add_class_arguments(ToyTrainConfig, skip={"extra"})
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``stori toy-pretrain``; returns the exit status."""
    parser = build_parser()
    args = function_kwargs(parser, parser.parse_args(argv))
    out = args.pop("out")
    meta = train(ToyTrainConfig(**args), out, log=lambda s: print(s, flush=True))
    print(f"wrote {out}.safetensors and {out}.json; held-out zero-shot accuracy: {meta['zero_shot_heldout']}")
    return 0


if __name__ == "__main__":
    import sys

    from stori_pl.cli import main as stori

    raise SystemExit(stori(["toy-pretrain", *sys.argv[1:]]))
