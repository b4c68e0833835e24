"""``python -m conveyor._cli``: the ``conveyor`` command without its console script."""

import sys

from conveyor._cli.main import main

sys.exit(main())
