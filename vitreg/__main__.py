"""``python -m vitreg`` = the ``vitreg`` command."""

import sys

from vitreg.cli import main

sys.exit(main())
