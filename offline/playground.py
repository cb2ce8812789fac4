"""`python -m offline.playground`: implemented in `offline.bench.playground`."""

from offline.bench.playground import main

if __name__ == "__main__":
    raise SystemExit(main())
