"""Offline work in four wings, each importing only the ones below it: `data` (archives, loaders, the scenario cache),
`train` (the neural model, hyper-parameters, inner validation, export), `eval` (cross-validation, reports, the
detection benchmark) and `bench` (benchmarks, the Prometheus replay, the playground, the stand-ins). The modules at
this level are shared plumbing and the front files of the `python -m offline.<command>` commands."""
