"""`python -m fgjax.main`, kept working: it runs `fgjax train` (fgjax/cli/train.py)."""

import sys

from fgjax.cli.train import run

if __name__ == "__main__":
    run(sys.argv)
