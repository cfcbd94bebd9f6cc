"""The Ray Tune trainable: a thin adapter over trainables.core."""
