"""Training and export: the neural model (`model`, `train`), hyper-parameters (`params`, JSON in offline/params/)
and their search (`search`), inner validation (`folds`, `evidence_cv`, `model_cv`) and the bundles (`export`,
`export_evidence`, `export_model`, `bundle_cache`)."""
