"""Benchmarks and the live stack they drive: `python -m offline.bench <kind>` (`cli`), the ranker, log and operator
benchmarks, the Prometheus replay of Nezha days (`replay`, `exporter_replay`, `openmetrics`), the playground and the
stand-ins (`standins/`)."""
