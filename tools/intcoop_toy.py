"""IntCoOp on the toy world (figures of docs/intcoop.md): ``python tools/intcoop_toy.py --seeds 1 2 3``.

The study itself is :mod:`stori_pl.toy.intcoop_study` (the tests call it with a smaller budget).
"""

from stori_pl.toy.intcoop_study import main

if __name__ == "__main__":
    raise SystemExit(main())
