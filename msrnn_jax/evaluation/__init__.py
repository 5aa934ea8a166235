"""Scoring predictions: per-frame metrics, the trivial baselines, pictures.

``metrics`` (MSE, MAE, SSIM, PSNR, radar CSI/HSS; the copy-last and blank
baselines; results files) and ``visualize`` (frame grids, GIFs). May import
``msrnn_jax.data`` (rainfall units); never the model or the training loop.
"""
