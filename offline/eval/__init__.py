"""Evaluation: scores (`scoring`), leave-one-day-out cross-validation (`lodocv`, `report`, `results`), the detection
benchmark (`detect`), the miss audit (`audit`) and ranking one scenario (`rank`)."""
