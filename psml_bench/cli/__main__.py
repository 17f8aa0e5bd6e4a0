"""``python -m psml_bench.cli``: the ``psml-bench`` command."""

import sys

from . import main

sys.exit(main())
