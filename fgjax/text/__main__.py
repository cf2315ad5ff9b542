"""`python -m fgjax.text`, kept working: it runs `fgjax text` (fgjax/cli/text.py)."""

import sys

from fgjax.cli.text import main

if __name__ == "__main__":
    sys.exit(main())
