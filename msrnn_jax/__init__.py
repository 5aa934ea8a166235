"""msrnn_jax: MS-RNN multi-scale recurrent networks for spatiotemporal prediction in JAX/Flax."""

__version__ = "0.1.0"
