"""CECL reproducibility pipeline library."""
