"""`python -m tokenforge`: the same as the `tokenforge` command (what the Snakemake rules run)."""

import sys

from tokenforge.cli import main

sys.exit(main())
