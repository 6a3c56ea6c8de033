"""``python -m flockrt.cli``: the same as the ``flockrt`` command."""

import sys

from flockrt.cli import main

sys.exit(main())
