"""The forward kernels of one transformer block on one TP rank, as the runtime runs them.

A Llama block: RMSNorm written out in eager PyTorch (cast to fp32, square, mean, rsqrt,
scale, cast back, weight), q/k/v projections, rotary embeddings (two multiplies, a negate,
a concatenation, an add, on q and on k), attention, the output projection, a residual add,
RMSNorm, SwiGLU (gate and up projections, SiLU, multiply, down projection), a residual add.
A GPT block: native LayerNorm (one kernel), projections with biases (added in the GEMM's
epilogue; a bias-gradient reduction in the backward), GELU, no rotary. Attention is fused
(flash / SDPA: no s x s tensor) or eager (scores written, scaled, masked, softmaxed, read).

Under TP (Megatron) each rank holds 1/t of the heads and of the FFN; with sequence
parallelism the norms and residual adds run on 1/t of the tokens, an all-gather enters each
column-parallel pair and a reduce-scatter leaves each row-parallel one, and the saved GEMM
input is the sequence shard, gathered again in the backward (Korthikanti et al. 2022);
without it the norms run on every token and an all-reduce follows each row-parallel GEMM.

The block's architecture comes from `ModelSpec` (`norm`, `position`, the biases of the
q/k/v, output and MLP projections, the MLP kind): `Arch.of`.
"""

from __future__ import annotations

from dataclasses import dataclass

from polychip.costmodel.ops import Attention, Collective, Gemm, Op, Tensor, stream
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

FP32_BYTES = 4


@dataclass(frozen=True)
class Arch:
    """How a block is built (docs/cost-model.md, "Per-op compute"), from `ModelSpec`."""

    rms_norm: bool
    rotary: bool
    learned_positions: bool
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    gated_mlp: bool

    @staticmethod
    def of(model: ModelSpec) -> Arch:
        return Arch(
            rms_norm=model.norm == "rmsnorm",
            rotary=model.position == "rope",
            learned_positions=model.position == "learned",
            qkv_bias=model.qkv_bias,
            out_bias=model.attn_out_bias,
            mlp_bias=model.mlp_bias,
            gated_mlp=model.gated_mlp,
        )


@dataclass(frozen=True)
class Shard:
    """One TP rank's share of one micro-batch."""

    model: ModelSpec
    job: TrainingJob
    micro_batch: int
    tp: int

    @property
    def arch(self) -> Arch:
        return Arch.of(self.model)

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.job.seq_len

    @property
    def sequence_parallel(self) -> bool:
        return self.tp > 1 and self.job.sequence_parallel

    @property
    def rows(self) -> float:
        """Tokens a rank's norms and residual adds run on."""
        return self.tokens / self.tp if self.sequence_parallel else float(self.tokens)

    @property
    def c(self) -> int:
        return self.job.compute_bytes

    def t(self, name: str, elems: float, itemsize: int | None = None) -> Tensor:
        return Tensor(name, elems, self.c if itemsize is None else itemsize)


def norm(sh: Shard, name: str, x: Tensor) -> tuple[list[Op], Tensor]:
    """The norm of the residual stream `x` (rows x h): its kernels and its output."""
    h, rows, c = sh.model.hidden_size, sh.rows, sh.c
    out = sh.t(name + ".out", rows * h)
    if not sh.arch.rms_norm:  # native LayerNorm: one kernel, fp32 mean and rstd kept
        stats = sh.t(name + ".stats", rows * 2, FP32_BYTES)
        return [stream(name, [x], [out, stats], saves=(x, stats))], out
    rstd = sh.t(name + ".rstd", rows, FP32_BYTES)
    # Eager RMSNorm (the runtime's, Hugging Face's): x.float(); pow(2); mean; + eps; rsqrt;
    # multiply; .to(dtype); multiply by the weight.
    xf = x if c == FP32_BYTES else sh.t(name + ".f32", rows * h, FP32_BYTES)
    scaled = sh.t(name + ".scaled", rows * h, FP32_BYTES)
    normed = scaled if c == FP32_BYTES else sh.t(name + ".normed", rows * h)
    casts = 0 if c == FP32_BYTES else 2
    reads = [x, xf, xf, xf, scaled, normed] if casts else [xf, xf, xf, normed]
    writes = [xf, xf, scaled, normed, out] if casts else [xf, scaled, out]
    op = stream(name, reads, writes, kernels=6 + casts, saves=(xf, rstd, normed))
    return [op], out


def column_in(sh: Shard, x: Tensor) -> list[Op]:
    """TP collectives where the replicated (or sequence-sharded) stream enters a
    column-parallel layer."""
    if sh.tp == 1:
        return []
    full = sh.tokens * sh.model.hidden_size * sh.c
    if sh.sequence_parallel:  # gather; the backward gathers the saved shard again, for
        regather = Collective(None, "all-gather", full, wgrad=True)  # the weight gradient
        return [Collective("all-gather", "reduce-scatter", full), regather]
    return [Collective(None, "all-reduce", full)]


def row_out(sh: Shard) -> list[Op]:
    """TP collectives after a row-parallel layer."""
    if sh.tp == 1:
        return []
    full = sh.tokens * sh.model.hidden_size * sh.c
    if sh.sequence_parallel:
        return [Collective("reduce-scatter", "all-gather", full)]
    return [Collective("all-reduce", None, full)]


def linear(sh: Shard, name: str, x: Tensor, n: int, k: int, bias: bool) -> Gemm:
    return Gemm(name, sh.tokens, n, k, bias=bias, saves=(x,))


def residual(sh: Shard, name: str, x: Tensor) -> tuple[Op, Tensor]:
    out = sh.t(name, sh.rows * sh.model.hidden_size)
    return stream(name, [x, out], [out], backward=1.0), out


def rotary(sh: Shard, name: str, x: Tensor) -> Op:
    """x * cos + cat(-x2, x1) * sin: five kernels, nothing per token kept."""
    half = sh.t(name + ".half", x.elems / 2)
    return stream(name, [x, half, x, x, x, x], [x, half, x, x, x], kernels=5)


def attention(sh: Shard, q: Tensor, k: Tensor, v: Tensor) -> tuple[list[Op], Tensor]:
    """The attention core on this rank's heads: fused (flash/SDPA) or eager."""
    m, s = sh.model, sh.job.seq_len
    heads = m.num_heads // sh.tp
    bh = sh.micro_batch * heads
    o = sh.t("attn.o", q.elems)
    if sh.job.attention == "fused":
        lse = sh.t("attn.lse", sh.tokens * heads, FP32_BYTES)
        moved = q.n_bytes + k.n_bytes + v.n_bytes + o.n_bytes
        core = Attention(
            "attn.flash", bh, s, m.head_dim, True, 2, moved, saves=(q, k, v, o, lse),
            backward_bytes=q.n_bytes + 2 * (k.n_bytes + v.n_bytes) + 3 * o.n_bytes,
        )  # fmt: skip
        return [core], o
    ops: list[Op] = []
    if k.elems < q.elems:  # grouped-query attention: keys and values repeated per head
        ops.append(stream("attn.repeat-kv", [k, v], [q, q]))
        k, v = sh.t("attn.k-rep", q.elems), sh.t("attn.v-rep", q.elems)
    scores = sh.t("attn.scores", bh * s * s)
    probs = sh.t("attn.probs", bh * s * s)
    d = m.head_dim
    ops += [
        Gemm("attn.qk", s, s, d, bh, weight=False, saves=(q, k)),
        stream("attn.scale", [scores], [scores]),
        stream("attn.mask", [scores], [scores]),
        stream("attn.softmax", [scores], [probs], saves=(probs,)),
        Gemm("attn.pv", s, d, s, bh, weight=False, saves=(probs, v)),
        stream("attn.transpose", [o], [o]),
    ]
    return ops, o


def block_forward(sh: Shard) -> list[Op]:
    """The forward kernels of one block on one TP rank, in execution order."""
    m, arch, t = sh.model, sh.arch, sh.tp
    h, hq, hkv, f = m.hidden_size, m.hidden_size // t, m.kv_dim // t, m.ffn_hidden_size // t
    n = sh.tokens
    x = sh.t("x", sh.rows * h)
    ops, a = norm(sh, "attn_norm", x)
    ops += column_in(sh, a)
    q, k, v = sh.t("q", n * hq), sh.t("k", n * hkv), sh.t("v", n * hkv)
    qb = arch.qkv_bias
    ops += [linear(sh, "wq", a, hq, h, qb), linear(sh, "wk", a, hkv, h, qb),
            linear(sh, "wv", a, hkv, h, qb)]
    if arch.rotary:
        ops += [rotary(sh, "rope.q", q), rotary(sh, "rope.k", k)]
        q, k = sh.t("q.rot", q.elems), sh.t("k.rot", k.elems)
    core, o = attention(sh, q, k, v)
    ops += [*core, linear(sh, "wo", o, h, hq, arch.out_bias), *row_out(sh)]
    add, x = residual(sh, "x.mid", x)
    ops.append(add)
    norm_ops, b = norm(sh, "mlp_norm", x)
    ops += norm_ops + column_in(sh, b)
    if arch.gated_mlp:
        gate, up, act, prod = (sh.t(name, n * f) for name in ("gate", "up", "act", "prod"))
        ops += [
            linear(sh, "w_gate", b, f, h, arch.mlp_bias),
            linear(sh, "w_up", b, f, h, arch.mlp_bias),
            stream("silu", [gate], [act], saves=(gate,)),
            stream("gate*up", [act, up], [prod], saves=(act, up)),
        ]
    else:
        pre, prod = sh.t("fc1", n * f), sh.t("act", n * f)
        ops += [linear(sh, "fc1", b, f, h, arch.mlp_bias),
                stream(m.activation, [pre], [prod], saves=(pre,))]
    ops += [linear(sh, "w_down", prod, h, f, arch.mlp_bias), *row_out(sh)]
    add, _ = residual(sh, "x.out", x)
    ops.append(add)
    return ops
