"""dcnn: derivative-constrained neural networks in PyTorch (no Ray here)."""
__version__ = "0.1.0"
