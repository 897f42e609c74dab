"""selal-jax: selective uncertainty-based active learning for medical image segmentation."""

__all__ = ["select_from_probs"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy (PEP 562) so that host-only modules such as selal_jax.metrics import without JAX.
    if name == "select_from_probs":
        from selal_jax.selection import select_from_probs

        return select_from_probs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
