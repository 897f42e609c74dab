"""Throughput benchmark: fused scoring, pool scaling, a host-side reference, training, MC reuse,
the PyTorch peer and whole rounds of the loop.

Run lines (JSON on stdout, a readable table on stderr):
  python -m selal_jax.bench --output=bench.json                  # defaults for the backend
  python -m selal_jax.bench --quick --output=/tmp/quick.json     # tiny sizes, about a minute
  python -m selal_jax.bench --sections=scoring --strategies=bald --dtypes=bfloat16

Defaults depend on the backend (`default_config`): on an accelerator they are the sizes the
project's targets are stated for (the U-Net of width 32 and depth 4, 240x240 slices, a pool of
4,096, pools of 1k-64k for scaling); on a CPU they shrink so that the whole run takes 10-16
minutes on two (shared) cores. Every size actually used is written to the JSON under "config".

What each section times:

* scoring: `scoring.score_pool` over a synthetic pool (host gather, host->device transfer of each
  batch, the fused forward + per-pixel uncertainty + masks + per-slice sums, a device_get of
  the per-slice stats every 32 batches), then `selection.select` for each mode. The device program is the same for
  every mode (it always computes the target, boundary and whole-slice sums); modes differ only in
  the host-side ranking, timed separately and added.
* scaling: the same `score_pool` call over pools of growing size; images are made batch by batch
  (`SyntheticPool`), so the process RSS measures the scoring path itself.
* reference: the published code's way: the same forward pass on the device, every probability map
  copied to a host array, then per-pixel entropy, masks and masked means in NumPy, one slice at a
  time; its throughput is compared with the fused path on the same pool (float32, selective
  entropy).
* train: the jitted `train.train_step` (forward, backward, Adam; state donated), fed host batches
  as `run.fit.fit` does. bfloat16 is mixed precision: float32 parameters, optimizer state and loss.
* mc_reuse: BALD with and without computing the encoder once per batch for all passes.
* peer (only with --sections=peer; needs torch): the same U-Net in PyTorch eager and
  torch.compile (inductor, channels-last) beside scoring (entropy), BALD and training,
  alternated in pairs; per-pair median ratios. Without torch its result is {"skipped": "torch not importable"}.
* loop (only with --sections=loop; needs the run and data layers, so nibabel and
  ml_collections): one full round of the real loop (train, score, select, diagnostics, per-case
  evaluation, checkpoint, records) on a generated pool of N slices in the slice cache, for N in
  `loop_pools`; each part's seconds and the process's peak anonymous memory (RssAnon) per N.
  Without those layers its result is {"skipped": ...}. See `loop`.

Multi-class and multi-channel (`--num_classes=C`, `--channels=K`): the U-Net gets C + 1 softmax
logits for C >= 2 (one sigmoid logit for C = 1) and K input channels; the synthetic labels are
class indices 0..C. The reference section is binary by definition and is skipped for C >= 2.

Compile time is measured apart (`jax.jit(f).lower(...).compile()`); the jitted functions then
reuse that executable, and one untimed warm-up call precedes every timed loop. Device memory comes
from the compiled program's `memory_analysis()` (null where the backend does not report it).

Modules: `config` (BenchConfig, defaults, validation), `measure` (timing, RSS, device memory,
environment; shared with benchmarks/), `pool` (SyntheticPool), `context` (Bench: the state the
sections share), `sections` (the sections and `run`), `reference` (the host reference), `peer`,
`loop` (imported only by the loop section), `table` (format_table) and `__main__` (the absl
flags, one per BenchConfig field).
"""

from selal_jax.bench.config import (
    AGGREGATION,
    BOUNDARY_WIDTH,
    BUDGET_BYTES_PER_SLICE,
    CONVENTION,
    DEFAULT_SECTIONS,
    DTYPES,
    LEARNING_RATE,
    LOOP_PARTS,
    REFERENCE_MODE,
    REFERENCE_PAIRS,
    REFERENCE_STRATEGY,
    SCHEMA_VERSION,
    SECTIONS,
    TARGET_THRESHOLD,
    BenchConfig,
    default_config,
    field_help,
    validate_config,
)
from selal_jax.bench.context import Bench
from selal_jax.bench.measure import (
    PeakAnon,
    compile_timed,
    current_rss_bytes,
    device_memory,
    environment,
    host_environment,
    median_run,
    median_seconds,
    peak_device_bytes,
    peak_rss_bytes,
    release_free_memory,
    rss_anon_bytes,
    timed_runs,
    wall_seconds,
)
from selal_jax.bench.peer import PEER_PAIRS, peer_section, torch_unet
from selal_jax.bench.pool import SyntheticPool
from selal_jax.bench.reference import host_entropy_stats, reference_section
from selal_jax.bench.sections import (
    SECTION_FUNCTIONS,
    loop_section,
    mc_reuse_section,
    measure_train,
    relative_difference,
    run,
    scaling_section,
    scoring_section,
    train_section,
)
from selal_jax.bench.table import format_table

__all__ = [
    "AGGREGATION",
    "BOUNDARY_WIDTH",
    "BUDGET_BYTES_PER_SLICE",
    "CONVENTION",
    "DEFAULT_SECTIONS",
    "DTYPES",
    "LEARNING_RATE",
    "LOOP_PARTS",
    "PEER_PAIRS",
    "PeakAnon",
    "REFERENCE_MODE",
    "REFERENCE_PAIRS",
    "REFERENCE_STRATEGY",
    "SCHEMA_VERSION",
    "SECTIONS",
    "SECTION_FUNCTIONS",
    "TARGET_THRESHOLD",
    "Bench",
    "BenchConfig",
    "SyntheticPool",
    "compile_timed",
    "current_rss_bytes",
    "default_config",
    "device_memory",
    "environment",
    "field_help",
    "format_table",
    "host_entropy_stats",
    "host_environment",
    "loop_section",
    "mc_reuse_section",
    "measure_train",
    "median_run",
    "median_seconds",
    "peak_device_bytes",
    "peak_rss_bytes",
    "peer_section",
    "reference_section",
    "release_free_memory",
    "relative_difference",
    "rss_anon_bytes",
    "run",
    "scaling_section",
    "scoring_section",
    "timed_runs",
    "torch_unet",
    "train_section",
    "validate_config",
    "wall_seconds",
]
