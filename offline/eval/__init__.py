"""Evaluation helpers: ranking scores (Acc@k, MRR) and their bootstrap statistics."""
