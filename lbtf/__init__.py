"""lbtf: large-batch training, sharp minima and their remedies in Keras 3 / TensorFlow."""

__version__ = "0.1.0"
