import sys

from stori_pl.cli import main

sys.exit(main())
