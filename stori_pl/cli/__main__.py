"""``python -m stori_pl.cli``: the same as the ``stori`` command."""

import sys

from stori_pl.cli import main

sys.exit(main())
