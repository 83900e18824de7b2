"""What torch.compile's partition keeps to rebuild the first block's input, by batch size.

With learned positions the first block's input is the sum of the token and position
embeddings' outputs (through the embedding's dropout when it is on). AOT autograd's min-cut
partitioner (torch 2.13, ``torch/_functorch/partitioners.py``) either keeps what the first
norm's backward reads or what rebuilds it from the two embeddings' outputs:

- RMSNorm, or a checkpointed block, rebuilds that input: the token embedding's output (counted
  as the block's input) and the position embedding's output (s d r) are kept, except at one
  row (b = 1), where the sum itself is (no larger than either);
- LayerNorm without checkpointing keeps its normalised input x_hat (T d x 4) at few rows and,
  from `REBUILD_MIN_ROWS` rows on, the token embedding's output instead (the same T d x 4),
  the position embedding's output (s d x 4) and the norm's mean (T x 4). The partitioner
  weighs each candidate's bytes by 1.1 ** (its distance from the backward, in ops), doubled
  where no non-fusible op writes it anyway (``get_node_weight``); the position output's s d
  does not grow with b while the others do, so the cheaper cut turns at a fixed b, which the
  dropout (more ops between the embeddings and the norm) moves up. The turns are measured:
  the weights give them (2 b 1.1^k against (b + 1) 1.1^(k + D), b > 1 / (2 / 1.1^D - 1))
  with the embeddings' outputs D = 4 ops (6 with dropout) further from the backward than
  x_hat, a reading not checked against the graph.

Measured by `scaleplan.reference.compiled.measure_compiled` (the partition's saved tensors,
fp32 and bf16 autocast, d 64 to 256, 2 to 12 layers, s 16 to 64): without dropout
x_hat at b = 1 and 2, the rebuild at b = 3 to 8; with dropout (CUDA's bool masks) x_hat at
b = 2 to 7, the rebuild at b = 8 (8 x 64 with block_size 64 and 128, 8 x 32 with block_size
32), 12 and 16, but x_hat at 8 x 32 with block_size 64: at 8 rows the two cuts weigh nearly
the same, and the model counts s d 4 + T 4 there that the partition does not keep (9216
bytes at d = 64). The whole compiled step at 8 x 64 tokens: tests/data/compiled_step_peaks.json.
"""

from __future__ import annotations

from typing import Any

from scaleplan.checks import is_integer
from scaleplan.memory.activations import STAT_BYTES, residual_bytes
from scaleplan.model.config import GPTConfig, Precision

__all__ = ["REBUILD_MIN_ROWS", "first_input_rebuild_terms"]

# The fewest rows (micro-batch b) from which a LayerNorm model compiled without checkpointing
# keeps what rebuilds its first block's input rather than x_hat, without and with the
# embedding's dropout (measured: b = 2 / 3 and 7 / 8 are the turns; see the module docstring).
REBUILD_MIN_ROWS: dict[bool, int] = {False: 3, True: 8}


def first_input_rebuild_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                              rebuilt: bool, dropout: bool) -> dict[str, Any]:
    """The position embedding's output (``position_output``, s d r) and, for LayerNorm without
    checkpointing (``rebuilt`` False), the first norm's mean (``norm1_mean``, T x 4), where
    the partition keeps them (learned positions only); ``rebuilt``: the block's input is
    rebuilt anyway (full checkpointing, RMSNorm). A numpy array of b gets zeros in its cells
    below the turn; a sympy symbol counts as many rows.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> first_input_rebuild_terms(cfg, 2, 4, precision="32-true", rebuilt=False, dropout=False)
    {}
    >>> first_input_rebuild_terms(cfg, 3, 4, precision="32-true", rebuilt=False, dropout=False)
    {'position_output': 128, 'norm1_mean': 48}
    """
    if cfg.position != "learned":
        return {}
    least = 2 if rebuilt else REBUILD_MIN_ROWS[dropout]
    if is_integer(b) and int(b) < least:
        return {}
    terms: dict[str, Any] = {"position_output": s * cfg.n_embd * residual_bytes(precision)}
    if not rebuilt:
        terms["norm1_mean"] = b * s * STAT_BYTES
    if hasattr(b, "dtype"):
        import numpy as np

        terms = {name: np.where(b < least, 0, v) for name, v in terms.items()}
    return terms
