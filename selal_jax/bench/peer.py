"""The peer section: the same U-Net in PyTorch, beside the product's scoring, BALD and training.

PyTorch is optional (`pip install selal-jax[peer]`); without it the section's result is
{"skipped": "torch not importable"}. The PyTorch network is the published architecture
(bias-free 3x3 convolutions, BatchNorm, ReLU, 2x2 max-pooling, 2x2 stride-2 transposed
convolutions, skip concatenation, dropout after the bottleneck and each decoder block, a 1x1
head) with the benchmark's width, depth and input channels and PyTorch's own initialisation: the
section compares speed, not outputs. Two PyTorch peers: eager (NCHW), and `torch.compile`
(inductor) of a channels-last copy with channels-last inputs, the strongest setting a PyTorch
user would pick (on a CPU inductor needs a C++ compiler; without one, or if compiling fails, the
result says why under `torch_compile_skipped` and only the eager peer runs).

Each measurement alternates the product and PyTorch, `PEER_PAIRS` (or `repeats`, if more) times
after two untimed warm-up rounds; the ratio is the median of the per-pair ratios, PyTorch
seconds / product seconds (above 1: the product is faster).

* score_entropy: `scoring.score_pool` (entropy, float32, the fused program: forward, per-pixel
  entropy, masks, per-slice sums, one fetch) vs eager inference over the same batches (sigmoid,
  binary entropy, target and boundary masks, masked sums, copied to the host).
* score_bald: the same with BALD and `mc_passes` passes (the product reuses the encoder; PyTorch
  runs the published loop: one full forward pass per pass, dropout on, BatchNorm frozen).
* train: `train.train_step` (Adam, BCE) vs `zero_grad`, forward, BCE, `backward`, Adam `step`,
  each at the first train batch size for `train_steps` steps.
"""

from __future__ import annotations

import copy
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from selal_jax.bench.config import BOUNDARY_WIDTH, LEARNING_RATE, TARGET_THRESHOLD
from selal_jax.bench.context import Bench
from selal_jax.bench.measure import load_average
from selal_jax.core import rng, train

PEER_PAIRS = 3  # at least this many alternating product/PyTorch runs per measurement


def peer_section(bench: Bench) -> dict:
    """Product vs PyTorch (eager and torch.compile), alternated in pairs; see the module."""
    try:
        import torch
    except ImportError:
        return {"skipped": "torch not importable"}
    c = bench.config
    if c.num_classes > 1:
        return {"skipped": f"binary head only (num_classes = {c.num_classes})"}
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    net = torch_unet(torch, c.channels, c.base_width, c.depth).to(device)
    pairs = max(PEER_PAIRS, c.repeats)
    model = bench.model("float32")
    pool, ids = bench.pool, bench.candidate_ids
    images = torch.from_numpy(np.asarray(pool[ids], np.float32))
    images = (images[:, None] if c.channels == 1 else images.permute(0, 3, 1, 2)).to(device)
    # Each peer: (the module it runs, the memory format of its inputs).
    variants = {"torch_eager": (net, torch.contiguous_format)}
    compiled, compile_skipped = _compiled_peer(torch, net, images[: c.batch_size])
    if compiled is not None:
        variants["torch_compile"] = (compiled, torch.channels_last)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    rows = []
    for name, strategy, passes, batch in (
        ("score_entropy", "entropy", 1, c.batch_size),
        ("score_bald", "bald", c.mc_passes, c.mc_batch_size),
    ):

        def product(strategy=strategy):
            return bench.run_score_pool(model, pool, ids, strategy)

        peers = {
            k: (
                lambda m=m, fmt=fmt, p=passes, b=batch: torch_score(
                    torch, m, images.contiguous(memory_format=fmt), p, b, sync
                )
            )
            for k, (m, fmt) in variants.items()
        }
        rows.append(_alternate(name, product, peers, len(ids), pairs, passes=passes, batch=batch))

    batch, steps = c.train_batches[0], c.train_steps
    tx = train.make_optimizer(LEARNING_RATE)
    state = [train.create_train_state(jax.tree_util.tree_map(jnp.copy, bench.variables), tx)]
    train_ids = np.arange(batch) % c.pool_size
    x, y = pool[train_ids], pool.labels(train_ids)
    step_key = rng.bench_train_key(bench.root_key)

    def product_train():
        loss = None
        for s in range(steps):
            state[0], loss = train.train_step(
                state[0], x, y, rng.bench_step_key(step_key, s), model=model, tx=tx
            )
        return jax.block_until_ready(loss)

    tx_labels = torch.from_numpy(np.asarray(y, np.float32)).to(device)
    peers = {}
    for k, (m, fmt) in variants.items():
        opt = torch.optim.Adam(m.parameters(), lr=LEARNING_RATE)
        tx_images = images[train_ids].contiguous(memory_format=fmt)
        peers[k] = lambda m=m, opt=opt, tx_images=tx_images: torch_train(
            torch, m, opt, tx_images, tx_labels, steps, sync
        )
    rows.append(_alternate("train", product_train, peers, batch * steps, pairs, batch=batch))
    result = {
        "torch": torch.__version__,
        "torch_device": device,
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "pairs": pairs,
        "rows": rows,
    }
    if compile_skipped:
        result["torch_compile_skipped"] = compile_skipped
    return result


def _compiled_peer(torch, net, images):
    """(`torch.compile` (inductor, static shapes) of a channels-last copy of `net`, None), or
    (None, why) if compiling or running it on `images` fails (e.g. no C++ compiler for inductor
    on a CPU). This call compiles the inference graph; the others compile in the warm-up."""
    module = copy.deepcopy(net).to(memory_format=torch.channels_last)
    compiled = torch.compile(module, dynamic=False)
    try:
        compiled.eval()
        with torch.inference_mode():
            compiled(images.contiguous(memory_format=torch.channels_last))
    except Exception as err:  # noqa: BLE001 (the optional peer fails in many ways: say which)
        return None, f"torch.compile failed: {type(err).__name__}: {str(err)[:200]}"
    return compiled, None


def _alternate(name, product, peers, n_slices, pairs, **extra) -> dict:
    """Warm-up twice, then `pairs` rounds of product, each peer; per-pair median ratios."""
    for _ in range(2):  # compilation (product), primitive creation / compilation (PyTorch)
        product()
        for fn in peers.values():
            fn()
    times = {"product": [], **{k: [] for k in peers}}
    for _ in range(pairs):
        for key, fn in (("product", product), *peers.items()):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    row = {"name": name, "slices": n_slices, **extra}
    for key, ts in times.items():
        row[f"{key}_s"] = ts
        row[f"{key}_slices_per_s"] = n_slices / statistics.median(ts)
    for key in peers:
        ratios = [t / p for p, t in zip(times["product"], times[key], strict=True)]
        row[f"product_over_{key}"] = statistics.median(ratios)
    return row


def torch_unet(torch, in_channels: int, base_width: int, depth: int, dropout: float = 0.2):
    """The published U-Net in PyTorch (NCHW; logits [batch, H, W])."""
    nn = torch.nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base_width * 2**i for i in range(depth)]
            ins = [in_channels] + widths[:-1]
            self.down = nn.ModuleList([block(i, w) for i, w in zip(ins, widths, strict=True)])
            self.bottleneck = block(widths[-1], 2 * widths[-1])
            self.upconvs = nn.ModuleList(
                [nn.ConvTranspose2d(2 * w, w, 2, stride=2) for w in reversed(widths)]
            )
            self.up = nn.ModuleList([block(2 * w, w) for w in reversed(widths)])
            self.head = nn.Conv2d(base_width, 1, 1)
            self.dropout = nn.Dropout(dropout)

        def forward(self, x):
            skips = []
            for b in self.down:
                x = b(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.dropout(self.bottleneck(x))
            for upconv, b, skip in zip(self.upconvs, self.up, reversed(skips), strict=True):
                x = self.dropout(b(torch.cat([skip, upconv(x)], 1)))
            return self.head(x)[:, 0]

    return UNet()


def torch_score(torch, net, images, passes: int, batch: int, sync) -> np.ndarray:
    """Per-slice target and boundary sums of the entropy (passes = 1) or BALD, on the host."""
    f = torch.nn.functional
    net.eval()
    if passes > 1:  # dropout on, BatchNorm frozen
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.train()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            if passes == 1:
                z = net(x)
                p = torch.sigmoid(z)
                u = -(p * f.logsigmoid(z) + (1 - p) * f.logsigmoid(-z))
            else:
                zs = torch.stack([net(x) for _ in range(passes)])
                ps = torch.sigmoid(zs)
                p = ps.mean(0)
                expected = -(ps * f.logsigmoid(zs) + (1 - ps) * f.logsigmoid(-zs)).mean(0)
                tiny = torch.finfo(p.dtype).tiny
                mean_h = -(
                    p * torch.log(p.clamp_min(tiny)) + (1 - p) * torch.log((1 - p).clamp_min(tiny))
                )
                u = (mean_h - expected).clamp_min(0)
            target, boundary = p > TARGET_THRESHOLD, (p - 0.5).abs() < BOUNDARY_WIDTH
            out.append(torch.stack([(u * target).sum((1, 2)), (u * boundary).sum((1, 2))], 1))
    result = torch.cat(out).cpu().numpy()
    sync()
    return result


def torch_train(torch, net, optimizer, images, labels, steps: int, sync) -> float:
    """`steps` Adam steps on BCE; returns the last loss."""
    net.train()
    loss = None
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), labels)
        loss.backward()
        optimizer.step()
    sync()
    return float(loss.detach())
