"""`python -m fgjax.cli <command> [arguments]`: the `fgjax` console script."""

import sys

from fgjax.cli import main

if __name__ == "__main__":
    sys.exit(main())
