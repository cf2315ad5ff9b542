"""`python -m fgjax.ddt`, kept working: it runs `fgjax ddt` (fgjax/cli/ddt.py)."""

from fgjax.cli.ddt import main

if __name__ == "__main__":
    main()
