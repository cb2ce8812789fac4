"""Training the neural model of earlier rounds: the model (torch) and its training recipe."""
