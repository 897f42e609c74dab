"""Per-program XLA compiler options by backend, and `backend_jit`, the `jax.jit` that uses them.

XLA:CPU (jaxlib 0.10) hands every convolution to YNNPACK by default. YNNPACK runs the forward
convolutions of the U-Net about as fast as XLA's own (Eigen) ones, but the weight gradients many
times slower: one 3x3 convolution, batch 16, 64x64, 64 -> 64 channels, weight gradient 610 ms
with YNNPACK, 92 ms without (two shared cores, same process). The option is set per compiled
program (`jax.jit(..., compiler_options=...)`), not through XLA_FLAGS, so importing selal_jax
changes no global setting, and only on the CPU backend: other backends compile with none.
"""

from __future__ import annotations

import functools

import jax

# The CPU options: no YNNPACK fusions (convolutions, dots) in the programs that use them.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(backend: str) -> dict[str, str] | None:
    """The compiler options of `backend_jit` programs on `backend` ('cpu', 'gpu', 'tpu')."""
    return dict(CPU_COMPILER_OPTIONS) if backend == "cpu" else None


class backend_jit:  # noqa: N801 (used like the function jax.jit)
    """`jax.jit(fun, **jit_kwargs)` with `compiler_options(jax.default_backend())`.

    The backend is looked up at the first call (not at import, which would initialise JAX's
    backends before a caller could configure them); one jitted function is kept per backend.
    Attributes of the jitted function (`lower`, `trace`, `eval_shape`, ...) are forwarded, and
    `__wrapped__` is `fun`, as for `jax.jit`.

    Use as `@functools.partial(backend_jit, static_argnames=...)`.
    """

    def __init__(self, fun, **jit_kwargs):
        self._fun = fun
        self._jit_kwargs = jit_kwargs
        self._by_backend = {}
        self._nested = None
        functools.update_wrapper(self, fun)

    def jitted(self, backend: str | None = None):
        """The jitted function for `backend` (default: `jax.default_backend()`)."""
        backend = jax.default_backend() if backend is None else backend
        if backend not in self._by_backend:
            self._by_backend[backend] = jax.jit(
                self._fun, compiler_options=compiler_options(backend), **self._jit_kwargs
            )
        return self._by_backend[backend]

    def __call__(self, *args, **kwargs):
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            # Called inside another trace (jit, eval_shape): compiler options are only allowed
            # on a top-level jit, and the outer program's own options apply anyway.
            return self.nested()(*args, **kwargs)
        return self.jitted()(*args, **kwargs)

    def nested(self):
        """The same function jitted without compiler options, for calls inside a trace."""
        if self._nested is None:
            self._nested = jax.jit(self._fun, **self._jit_kwargs)
        return self._nested

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.jitted(), name)
