"""The readable summary of a benchmark result (`format_table`), printed to stderr."""

from __future__ import annotations

from collections.abc import Sequence

from selal_jax.bench.config import BUDGET_BYTES_PER_SLICE, LOOP_PARTS


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def _mib(memory: dict | None):
    if not memory or "peak_bytes" not in memory:
        return None
    return memory["peak_bytes"] / 2**20


def format_table(result: dict) -> str:
    """A readable summary of `run`'s result."""
    env, cfg = result["environment"], result["config"]
    parts = [
        f"device: {env['device_kind']} ({env['backend']}), cpu: {env['cpu_model']} "
        f"x{env['cpu_count']}, jax {env['jax']}, flax {env['flax']}",
        f"U-Net width {cfg['base_width']} depth {cfg['depth']} "
        f"({result['model']['params']:,} params), {cfg['image_size']}x{cfg['image_size']} slices, "
        f"pool {cfg['pool_size']}, MC passes {cfg['mc_passes']}",
    ]
    # Older results have neither field: binary, one channel.
    classes, channels = cfg.get("num_classes", 1), cfg.get("channels", 1)
    if (classes, channels) != (1, 1):
        parts[-1] += f", {classes} foreground classes, {channels} input channels"
    if "scoring" in result:
        parts += [
            "\nscoring (score_pool + select):",
            _table(
                (
                    "strategy",
                    "mode",
                    "dtype",
                    "batch",
                    "compile s",
                    "slices/s",
                    "Mpix/s",
                    "device-only slices/s",
                    "dev MiB",
                ),
                [
                    (
                        r["strategy"],
                        r["mode"],
                        r["dtype"],
                        r["batch_size"],
                        r["compile_s"],
                        r["slices_per_s"],
                        r["pixels_per_s"] / 1e6,
                        r["device_only_slices_per_s"],
                        _mib(r["device_memory"]),
                    )
                    for r in result["scoring"]
                ],
            ),
        ]
    if "scaling" in result:
        s = result["scaling"]
        parts += [
            f"\nscaling ({s['strategy']}, {s['dtype']}, {s['image_size']}x{s['image_size']}, "
            f"batch {s['batch_size']}; per-slice time spread {s['per_slice_time_spread']:.2f}):",
            _table(
                ("pool", "seconds", "slices/s", "us/slice", "RSS MiB", "peak RSS MiB"),
                [
                    (
                        r["pool_size"],
                        r["seconds"],
                        r["slices_per_s"],
                        r["us_per_slice"],
                        None if r["rss_after_bytes"] is None else r["rss_after_bytes"] / 2**20,
                        r["peak_rss_bytes"] / 2**20,
                    )
                    for r in s["rows"]
                ],
            ),
        ]
    if "reference" in result and "skipped" in result["reference"]:
        parts.append(f"\nreference: skipped ({result['reference']['skipped']})")
    elif "reference" in result:
        r = result["reference"]
        parts += [
            f"\nreference ({r['strategy']} {r['mode']}, {r['dtype']}, pool {r['pool_size']}):",
            _table(
                ("path", "device+copy s", "host scoring s", "select s", "total s", "slices/s"),
                [
                    (
                        "host (published)",
                        r["host"]["forward_copy_s"],
                        r["host"]["host_scoring_s"],
                        r["host"]["select_s"],
                        r["host"]["seconds"],
                        r["host"]["slices_per_s"],
                    ),
                    (
                        "fused",
                        r["fused"]["score_s"],
                        None,
                        r["fused"]["select_s"],
                        r["fused"]["seconds"],
                        r["fused"]["slices_per_s"],
                    ),
                ],
            ),
            f"fused / host: {r['speedup']:.2f}x",
        ]
    if "train" in result:
        parts += [
            "\ntrain (train_step: forward, backward, Adam):",
            _table(
                ("dtype", "batch", "compile s", "slices/s", "steps/s", "loss dtype", "dev MiB"),
                [
                    (
                        r["dtype"],
                        r["batch_size"],
                        r["compile_s"],
                        r["slices_per_s"],
                        r["steps_per_s"],
                        r["loss_dtype"],
                        _mib(r["device_memory"]),
                    )
                    for r in result["train"]
                ],
            ),
        ]
    if "mc_reuse" in result:
        parts += [
            "\nMC encoder reuse (bald, score_pool only):",
            _table(
                ("dtype", "passes", "reuse slices/s", "no-reuse slices/s", "speedup"),
                [
                    (
                        r["dtype"],
                        r["passes"],
                        r["reuse"]["slices_per_s"],
                        r["no_reuse"]["slices_per_s"],
                        r["speedup"],
                    )
                    for r in result["mc_reuse"]
                ],
            ),
        ]
    if "peer" in result and "skipped" in result["peer"]:
        parts.append(f"\npeer: skipped ({result['peer']['skipped']})")
    elif "peer" in result:
        p = result["peer"]
        peers = [k for k in ("torch_eager", "torch_compile") if f"{k}_s" in p["rows"][0]]
        load = p.get("load_average")
        parts += [
            f"\npeer (PyTorch {p['torch']} on {p['torch_device']}, {p['torch_threads']} threads, "
            f"{p['pairs']} alternated pairs; ratio = median per-pair PyTorch s / product s"
            + (f"; load average {load[0]:.2f}" if load else "")
            + "):",
            _table(
                ("measurement", "batch", "product slices/s")
                + tuple(f"{k} slices/s" for k in peers)
                + tuple(f"product / {k}" for k in peers),
                [
                    (r["name"], r["batch"], r["product_slices_per_s"])
                    + tuple(r[f"{k}_slices_per_s"] for k in peers)
                    + tuple(r[f"product_over_{k}"] for k in peers)
                    for r in p["rows"]
                ],
            ),
        ]
        if "torch_compile_skipped" in p:
            parts.append(f"torch_compile: skipped ({p['torch_compile_skipped']})")
    if "loop" in result:
        parts.append(_loop_table(result["loop"], cfg))
    parts.append(
        f"\npeak RSS {result['peak_rss_bytes'] / 2**20:,.0f} MiB, total {result['total_s']:.0f} s"
    )
    return "\n".join(parts)


def _loop_table(loop, cfg: dict) -> str:
    if "skipped" in loop:
        return f"\nloop: skipped ({loop['skipped']})"
    size = cfg["loop_image_size"]
    return "\n".join(
        [
            f"\nloop (one round of the loop; {size}x{size}, U-Net width {cfg['loop_base_width']} "
            f"depth {cfg['loop_depth']}, batch {cfg['loop_batch_size']}; median of "
            f"{loop[0]['repeats']} rounds; seconds per part; memory allowance: one batch + "
            f"{BUDGET_BYTES_PER_SLICE} B per added slice):",
            _table(
                (
                    "pool",
                    *LOOP_PARTS,
                    "score us/slice",
                    "ratio",
                    "peak anon MiB",
                    "growth",
                    "allowed",
                ),
                [
                    (
                        r["pool_size"],
                        *(r["seconds"][p] for p in LOOP_PARTS),
                        r["score_us_per_slice"],
                        r["score_per_slice_ratio"],
                        r["peak_anon_mib"],
                        r["anon_growth_mib"],
                        r["allowance_mib"],
                    )
                    for r in loop
                ],
            ),
        ]
    )
