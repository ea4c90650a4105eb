"""``python -m netinject``: the same as the ``netinject`` command."""

import sys

from .cli import main

sys.exit(main())
