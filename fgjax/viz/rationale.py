"""`python -m fgjax.viz.rationale`, kept working: it runs `fgjax rationale`."""

from fgjax.cli.rationale import main

if __name__ == "__main__":
    main()
