"""`python -m fgjax.evaluate`, kept working: it runs `fgjax eval` (fgjax/cli/eval.py)."""

from fgjax.cli.eval import main

if __name__ == "__main__":
    main()
