"""The single-pass scoring program on the CPU: its forward pass with the evaluation layers
("before") and with the scoring layers (`UNet(..., scoring=True)`, "now"), optionally beside
PyTorch's `torch.compile` (inductor, channels-last) and with a per-level profile of the 3x3
convolutions. Every variant is compiled apart and they alternate in one process; prints JSON.

  PYTHONPATH=. python benchmarks/scoring_forward.py                        # published U-Net
  PYTHONPATH=. python benchmarks/scoring_forward.py --torch_compile --layers

GFLOP/s divide XLA's cost-analysis FLOPs of the evaluation forward pass by the median time.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from selal_jax.bench import measure  # noqa: E402
from selal_jax.bench.peer import torch_score, torch_unet  # noqa: E402
from selal_jax.core import uncertainty, xla_options  # noqa: E402
from selal_jax.core.models import UNet, init_variables  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 16, "Slices per program call.")
_SIZE = flags.DEFINE_integer("size", 64, "Slice height and width.")
_ROUNDS = flags.DEFINE_integer("rounds", 15, "Alternated rounds (each times 3 calls per variant).")
_TORCH = flags.DEFINE_bool(
    "torch_compile", False, "Also time torch.compile (and, with --layers, oneDNN); needs torch."
)
_LAYERS = flags.DEFINE_bool("layers", False, "Also time each 3x3 convolution level alone.")
T, B = np.float32(0.1), np.float32(0.1)  # target threshold, boundary width


def alternate(variants: dict, rounds: int, calls: int = 3) -> dict:
    """Median seconds per call of each no-argument callable, alternated `rounds` times."""
    for fn in variants.values():  # warm-up (compilation, primitive creation)
        jax.block_until_ready(fn())
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = fn()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(ts) for name, ts in times.items()}


def score_program(model, scoring: bool):
    """The single-pass entropy program of `scoring.score_batch`, with either forward pass."""

    def program(variables, images):
        logits = model.apply(variables, images, False, scoring=scoring)
        return jax.vmap(
            lambda z: uncertainty.stats_from_terms(
                uncertainty.terms_from_logits(z[None]), "entropy", "paper", T, B
            )
        )(logits)

    return xla_options.backend_jit(program)


def level_profile(batch: int, size: int, rounds: int, torch=None) -> list[dict]:
    """Each resolution level's 3x3 convolutions (+ affine + ReLU, the BatchNorm epilogue),
    compiled alone as XLA:CPU runs them, as in the published U-Net (width 32, depth 4); with
    `torch`, also PyTorch's (oneDNN) Conv2d + ReLU on channels-last inputs."""
    levels = []
    for level in range(5):
        hw, w = size // 2**level, 32 * 2**level
        down_in = 1 if level == 0 else w // 2
        shapes = [(down_in, w), (w, w)] + ([(2 * w, w), (w, w)] if level < 4 else [])
        variants, flops = {}, 0.0
        for i, (cin, cout) in enumerate(shapes):
            key = jax.random.key(level * 10 + i)
            x = jax.random.normal(key, (batch, hw, hw, cin))
            k = jax.random.normal(key, (3, 3, cin, cout)) * 0.05

            def layer(x, k):
                y = jax.lax.conv_general_dilated(
                    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
                return jnp.maximum(y * 1.1 + 0.1, 0.0)

            compiled = xla_options.backend_jit(layer).lower(x, k).compile()
            flops += compiled.cost_analysis()["flops"]
            variants[f"{i}: {cin}->{cout}"] = lambda c=compiled, x=x, k=k: c(x, k)
            if torch is not None:
                conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(
                    memory_format=torch.channels_last
                )
                tx = torch.randn(batch, cin, hw, hw).contiguous(memory_format=torch.channels_last)
                variants[f"torch {i}: {cin}->{cout}"] = lambda conv=conv, tx=tx: _torch_layer(
                    torch, conv, tx
                )
        # Each library's convolutions alternate among themselves: PyTorch's OpenMP threads keep
        # spinning for a while after a call, which would slow the short XLA calls after it.
        xla = {n: f for n, f in variants.items() if not n.startswith("torch")}
        xla_s = sum(alternate(xla, rounds).values())
        level = {"size": hw, "convolutions": [n.split(": ")[1] for n in xla]}
        level |= {"gflop": flops / 1e9, "ms": xla_s * 1e3, "gflop_per_s": flops / xla_s / 1e9}
        if torch is not None:
            peer = {n: f for n, f in variants.items() if n.startswith("torch")}
            torch_s = sum(alternate(peer, rounds).values())
            level |= {"torch_ms": torch_s * 1e3, "torch_gflop_per_s": flops / torch_s / 1e9}
        levels.append(level)
    return levels


def _torch_layer(torch, conv, x):
    with torch.inference_mode():
        return torch.relu(conv(x))


def main(argv):
    del argv
    batch, size = _BATCH.value, _SIZE.value
    model = UNet(base_width=32, depth=4, head_bias_prior=0.01)
    variables = init_variables(model, jax.random.key(0), size, size)
    images = jax.random.normal(jax.random.key(1), (batch, size, size))
    forward = xla_options.backend_jit(lambda v, x: model.apply(v, x, False))
    flops = forward.lower(variables, images).compile().cost_analysis()["flops"]
    programs = {name: score_program(model, s) for name, s in (("before", False), ("now", True))}
    variants = {name: (lambda p=p: p(variables, images)) for name, p in programs.items()}
    torch = None
    if _TORCH.value:
        import torch

        net = torch_unet(torch, 1, 32, 4).to(memory_format=torch.channels_last)
        compiled = torch.compile(copy.deepcopy(net), dynamic=False)
        x = torch.from_numpy(np.array(images))[:, None].contiguous(
            memory_format=torch.channels_last
        )
        variants["torch_compile"] = lambda: torch_score(torch, compiled, x, 1, batch, lambda: None)
    seconds = alternate(variants, _ROUNDS.value)
    result = {
        "config": {"batch": batch, "size": size, "rounds": _ROUNDS.value},
        "environment": measure.environment(),
        "load_average": list(os.getloadavg()),
        "forward_gflop_per_slice": flops / batch / 1e9,
        "programs": {
            name: {
                "ms_per_batch": s * 1e3,
                "slices_per_s": batch / s,
                "gflop_per_s": flops / s / 1e9,
            }
            for name, s in seconds.items()
        },
    }
    if _LAYERS.value:
        result["conv_levels"] = level_profile(batch, size, max(3, _ROUNDS.value // 2), torch)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
