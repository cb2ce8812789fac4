"""`python -m offline.search`: implemented in `offline.train.search`."""

from offline.cli import run_cli
from offline.train.search import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
