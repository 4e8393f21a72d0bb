"""sparseshare: multi-task sequence labeling with sparse and other sharing strategies."""
__version__ = "0.1.0"
