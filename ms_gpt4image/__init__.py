"""MindSpore implementation of GPT4Image (arXiv 2306.00693): the training half."""

__version__ = "0.1.0"
