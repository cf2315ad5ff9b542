"""`python -m fgjax.viz.report`, kept working: it runs `fgjax report` (fgjax/cli/report.py)."""

from fgjax.cli.report import main

if __name__ == "__main__":
    main()
