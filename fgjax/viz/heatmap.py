"""`python -m fgjax.viz.heatmap`, kept working: it runs `fgjax heatmap` (fgjax/cli/heatmap.py)."""

from fgjax.cli.heatmap import main

if __name__ == "__main__":
    main()
