"""`python -m fgjax.plot`, kept working: it runs `fgjax plot` (fgjax/cli/plot.py)."""

from fgjax.cli.plot import main

if __name__ == "__main__":
    main()
