"""`python -m offline.results`: implemented in `offline.eval.results`."""

from offline.cli import run_cli
from offline.eval.results import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
