"""`python -m offline.export`: implemented in `offline.train.export`."""

from offline.cli import run_cli
from offline.train.export import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
