"""maml-tf: a TensorFlow 2 / Keras 3 port of MAML (Liu et al., ACM MM 2019)."""

__version__ = "0.1.0"
