"""`python -m tokenforge.cli`: the same as the `tokenforge` command."""

import sys

from tokenforge.cli import main

sys.exit(main())
