"""Compile-only analyses: training memory and FLOPs vs frame size (``footprint``).

Uses the public model API and ``msrnn_jax.training.step`` (the real training
step, compiled but never run); never the training loop.
"""
