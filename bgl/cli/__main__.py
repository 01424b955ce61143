"""`python -m bgl.cli ...` = `bgl ...`."""

import sys

from bgl.cli import main

sys.exit(main())
