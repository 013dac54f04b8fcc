"""lop: a reproducible library for research on loss of plasticity in deep continual learning.

Reproduces Dohare et al., "Loss of plasticity in deep continual learning", Nature 632 (2024).
"""

__version__ = "0.1.0"
