"""`python -m offline.rank`: implemented in `offline.eval.rank`."""

from offline.cli import run_cli
from offline.eval.rank import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
