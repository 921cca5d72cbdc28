"""vitreg: find, measure and fix high-norm artifact tokens in Vision Transformers with register tokens."""

__version__ = "0.1.0"
