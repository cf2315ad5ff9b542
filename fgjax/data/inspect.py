"""`python -m fgjax.data.inspect`, kept working: it runs `fgjax inspect` (fgjax/cli/inspect.py)."""

import sys

from fgjax.cli.inspect import main

if __name__ == "__main__":
    sys.exit(main())
