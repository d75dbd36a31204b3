"""``python -m bench <scenario>``: the load tool's command line."""

import sys

from bench.cli import main

sys.exit(main())
