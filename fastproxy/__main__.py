"""``python -m fastproxy``: the same command line as ``fastproxy``."""
import sys

from fastproxy.cli import main

sys.exit(main())
