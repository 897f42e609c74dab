"""selal-jax: selective uncertainty-based active learning for medical image segmentation."""

from selal_jax.selection import select_from_probs

__all__ = ["select_from_probs"]
__version__ = "0.1.0"
