"""`python -m offline.replay`: implemented in `offline.bench.replay`."""

from offline.bench.replay import main
from offline.cli import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
