"""lmforge: train fully open OLMo 2-style language models end to end."""

__version__ = "0.1.0"
