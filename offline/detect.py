"""`python -m offline.detect`: implemented in `offline.eval.detect`."""

from offline.cli import run_cli
from offline.eval.detect import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
