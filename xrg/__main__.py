"""``python -m xrg ...`` (and ``torchrun ... -m xrg train ...``): the ``xrg`` command line."""

import sys

from xrg.cli import main

sys.exit(main())
