"""The embedding (first stage) and the final norm, output head and loss (last stage), forward
and backward, on one TP rank: the kernels `blocks.py` does not cover.

Embedding: a gather of one row per token; its backward zeroes a V x h gradient, scatter-adds
the tokens' gradients into it and adds it into the gradient buffer -- the whole V x h table
is touched every micro-batch. Learned positions add a second gather and an add.
Head: the final norm, the V x h projection, fp32 log-probabilities for the cross-entropy.
Vocabulary-parallel under TP (`job.vocab_parallel`, Megatron): each rank holds V/t rows of
both tables; the embedding masks the tokens outside its range and all-reduces (sequence
parallel: reduce-scatters) its output; the loss all-reduces three b*s-value fp32 vectors
(max, sum of exponentials, target logit). Replicated: every rank does all V*h of the work.
"""

from __future__ import annotations

from polychip.costmodel.blocks import FP32_BYTES, Shard, column_in, norm
from polychip.costmodel.ops import Collective, Gemm, Op, Stream, backward_pass, stream

ID_BYTES = 8  # int64 token ids
VOCAB_MASK_KERNELS = 5  # ids < start, ids >= end, or, subtract start, zero the masked ids
CROSS_ENTROPY_ALL_REDUCES = 3  # max, sum of exponentials, target logit (Megatron)


def vocab_rows(sh: Shard) -> int:
    """Rows of the embedding (and head) a rank holds."""
    v = sh.model.vocab_size
    return -(-v // sh.tp) if sh.job.vocab_parallel else v


def embedding_passes(sh: Shard) -> tuple[list[Op], list[Op]]:
    """(forward, backward) kernels of the token (and position) embedding."""
    h, c, r = sh.model.hidden_size, sh.c, sh.job.reduce_bytes
    split = sh.tp > 1 and sh.job.vocab_parallel
    rows = sh.tokens if split else sh.rows  # a replicated table gathers only its own shard
    out = sh.t("embed.out", rows * h)
    ids = sh.t("ids", rows, ID_BYTES)
    fwd: list[Op] = []
    if split:
        fwd.append(stream("embed.mask-ids", [ids] * VOCAB_MASK_KERNELS, [ids] * VOCAB_MASK_KERNELS,
                          kernels=VOCAB_MASK_KERNELS, backward=0))  # fmt: skip
    fwd.append(stream("embed.gather", [ids, out], [out], saves=(ids,), backward=0))
    if split:
        fwd.append(stream("embed.zero-masked", [out], [out], backward=0))
        full = sh.tokens * h * c
        reduce = "reduce-scatter" if sh.sequence_parallel else "all-reduce"
        fwd.append(Collective(reduce, "all-gather" if sh.sequence_parallel else None, full))
    table = vocab_rows(sh) * h
    grad = sh.t("embed.grad", rows * h)
    bwd: list[Op] = [
        *(op for op in backward_pass(fwd, c, r) if isinstance(op, Collective)),
        # zero the V x h gradient; scatter-add the tokens' rows into it; add it to the buffer
        Stream("embed.grad-table", table * c + 3 * grad.n_bytes + table * (c + 2 * r), 3,
               wgrad=True),
    ]
    if sh.arch.learned_positions:
        pos = sh.t("pos.out", sh.rows * h)
        fwd += [stream("pos.gather", [pos], [pos], backward=0), stream("pos.add", [pos] * 2, [pos])]
        positions = sh.job.seq_len * h
        bwd.append(Stream("pos.grad-table", positions * (2 * c + 2 * r) + 3 * pos.n_bytes, 3,
                          wgrad=True))
    return fwd, bwd


def loss_passes(sh: Shard, vocab: int, rows: int) -> tuple[list[Op], list[Op]]:
    """Cross-entropy over `rows` tokens' `vocab` logits: fp32 log-probabilities (a cast first
    for 16-bit logits), kept for the backward; the backward writes the one-hot gradient,
    the log-softmax gradient and (16-bit) casts it back."""
    c = sh.c
    logits = rows * vocab
    cast = c != FP32_BYTES
    logp = sh.t("loss.logp", logits, FP32_BYTES)
    targets = sh.t("loss.targets", rows, ID_BYTES)
    # cast: read c, write 4; log-softmax: read 4 twice (max, sum of exp), write 4
    fwd_bytes = logits * ((c + FP32_BYTES if cast else 0) + 3 * FP32_BYTES)
    # one-hot gradient 4; log-softmax backward: read 4 + 4, write 4; cast back: read 4, write c
    bwd_bytes = logits * (4 * FP32_BYTES + (FP32_BYTES + c if cast else 0))
    fwd: list[Op] = [Stream("loss", fwd_bytes, 2 + cast, saves=(logp, targets), backward=0)]
    bwd: list[Op] = [Stream("loss.bwd", bwd_bytes, 2 + cast)]
    if sh.tp > 1 and sh.job.vocab_parallel:
        fwd += [Collective("all-reduce", None, rows * FP32_BYTES)] * CROSS_ENTROPY_ALL_REDUCES
    return fwd, bwd


def head_passes(sh: Shard) -> tuple[list[Op], list[Op]]:
    """(forward, backward) kernels of the final norm, the output projection and the loss."""
    h, c, r = sh.model.hidden_size, sh.c, sh.job.reduce_bytes
    x = sh.t("head.in", sh.rows * h)
    fwd, normed = norm(sh, "final_norm", x)
    if sh.tp > 1 and sh.job.vocab_parallel:
        fwd += column_in(sh, normed)
    elif sh.sequence_parallel:  # a replicated head needs every token: gather, slice back
        fwd.append(Collective("all-gather", None, sh.tokens * h * c))
    vocab = vocab_rows(sh)
    fwd.append(Gemm("head", sh.tokens, vocab, h, saves=(normed,)))
    loss_fwd, loss_bwd = loss_passes(sh, vocab, sh.tokens)
    return fwd + loss_fwd, loss_bwd + backward_pass(fwd, c, r)
