"""`python -m offline.bench <kind>`: the benchmark dispatcher in `offline.bench.cli`."""

from offline.bench.cli import main
from offline.cli import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
