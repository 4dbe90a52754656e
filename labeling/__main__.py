"""``python -m labeling ...`` = ``finsent label ...``."""

import sys

from labeling.cli import main

sys.exit(main())
