"""Training: the compiled loop, the execution plan, the optimizer, evaluation and callbacks."""
