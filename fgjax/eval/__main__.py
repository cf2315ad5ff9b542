"""`python -m fgjax.eval ...`: the evaluation command line (see fgjax/evaluate.py)."""

from fgjax.evaluate import main

if __name__ == "__main__":
    main()
