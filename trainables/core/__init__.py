"""The shared training core: data, models, methods, attacks, evaluation and the loop (pure torch)."""
