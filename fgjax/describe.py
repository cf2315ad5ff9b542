"""`python -m fgjax.describe`, kept working: it runs `fgjax describe` (fgjax/cli/describe.py)."""

from fgjax.cli.describe import main

if __name__ == "__main__":
    main()
