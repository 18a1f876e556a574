"""``python -m gateway_sim``: the same command as ``gateway sim``."""

import sys

from .cli import main

sys.exit(main())
