"""`python -m offline.lodocv`: implemented in `offline.eval.lodocv`."""

from offline.cli import run_cli
from offline.eval.lodocv import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
