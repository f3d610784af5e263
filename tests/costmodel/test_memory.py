"""Per-device memory: model state by precision, activations following the job (attention
kernel, sequence parallelism, recompute), the last stage's logits, in-flight micro-batches."""

from __future__ import annotations

import pytest

from polychip.costmodel.estimate import CostModel
from polychip.costmodel.memory import (
    RESERVE_FIXED_BYTES,
    RESERVE_FRACTION,
    block_activations,
    in_flight_micro_batches,
    loss_bytes,
    stage_params,
)
from polychip.costmodel.precision import StateBytes
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec, load_model

GIB = 2**30
GPT3 = load_model("gpt3-175b")  # LayerNorm, GELU, biases, MHA: Korthikanti's block
# h = 1024, 16 heads (MHA), SwiGLU f = 4096, V = 32000, 8 layers: a Llama block.
M = ModelSpec("m", 8, 1024, 16, 16, 4096, 32000)
TIED = ModelSpec("tied", 4, 64, 4, 4, 256, 1000, tie_embeddings=True)


def _job(seq: int = 1024, **kw) -> TrainingJob:
    return TrainingJob(global_batch=8, seq_len=seq, **kw)


def _per_token(model: ModelSpec, tp: int = 1, seq: int = 1024, **kw) -> float:
    return block_activations(model, _job(seq, **kw), 1, tp).saved_bytes / seq


def test_model_state_follows_the_precision() -> None:
    # Mixed precision: 16-bit weights, a gradient buffer in the reduce dtype, fp32 master
    # weights + m + v; fp32 and tf32 weights are their own master.
    assert StateBytes.of(_job()) == StateBytes(2, 4, 12)
    assert StateBytes.of(_job(grad_reduce_dtype="bf16")) == StateBytes(2, 2, 12)
    assert StateBytes.of(_job(precision="fp32")) == StateBytes(4, 4, 8)
    assert StateBytes.of(_job(precision="tf32")) == StateBytes(4, 4, 8)


def test_gpt_block_keeps_korthikantis_bytes_less_the_dropout_masks() -> None:
    # Korthikanti et al.: 34 s b h bytes per layer (16-bit, flash attention keeps no scores);
    # 2 of the 34 are the 1-byte dropout masks, not modelled. Beside them: the fp32 softmax
    # log-sum-exp (4 bytes per head) and two norms' fp32 mean and rstd (16 bytes).
    h, a = GPT3.hidden_size, GPT3.num_heads
    assert _per_token(GPT3) == pytest.approx(32 * h + 4 * a + 16)
    # Sequence parallelism shards every term by t (Korthikanti's 34 s b h / t) ...
    assert _per_token(GPT3, tp=8) == pytest.approx((32 * h + 4 * a + 16) / 8)
    # ... without it the norms' inputs and outputs (8 h + 16 of them) stay whole.
    replicated = 8 * h + 16
    no_sp = _per_token(GPT3, tp=8, sequence_parallel=False)
    assert no_sp - _per_token(GPT3, tp=8) == pytest.approx(replicated * (1 - 1 / 8))


@pytest.mark.parametrize(("precision", "c"), [("bf16", 2), ("fp32", 4)])
def test_llama_block_tensor_by_tensor(precision: str, c: int) -> None:
    # The runtime's eager RMSNorm keeps its fp32 input (a fp32 copy when 16-bit), the fp32
    # rstd, the normalised value before the weight and the output the projections save.
    h, kv, f, a = M.hidden_size, M.kv_dim, M.ffn_hidden_size, M.num_heads
    norm = 4 * h + 4 + c * h + c * h
    attention = c * (h + kv + kv + h) + 4 * a  # rotated q and k, v, output; log-sum-exp
    mlp = 4 * c * f  # gate, SiLU(gate), up, their product
    assert _per_token(M, precision=precision) == pytest.approx(2 * norm + attention + mlp)


def test_eager_attention_keeps_the_s_squared_probabilities() -> None:
    extra = []
    for seq in (1024, 2048):
        fused = block_activations(M, _job(seq), 1, 1).saved_bytes
        eager = block_activations(M, _job(seq, attention="eager"), 1, 1).saved_bytes
        # 16-bit probabilities, a x s^2 per sequence, instead of the fp32 log-sum-exp (a x s)
        a = M.num_heads
        assert eager - fused == pytest.approx(2 * a * seq**2 - 4 * a * seq)
        extra.append(eager - fused)
    assert extra[1] > 3.9 * extra[0]  # twice the sequence, four times the extra memory


def _cm(**kw) -> CostModel:
    cluster = cluster_from_dict({"nodes": [{"chip": "h100", "count": 1, "nic_gbps": 400}]})
    return CostModel(cluster, M, _job(**kw))


def _mem(cm: CostModel, **kw):
    args = dict(first=False, last=False, in_flight=3, recompute=False, zero_shards=4)
    args.update(kw)
    return cm.stage_memory(cm.chip("h100"), 4, 2, 2, **args)  # type: ignore[arg-type]


def test_a_middle_stage_adds_up() -> None:
    cm = _cm()
    mem = _mem(cm)
    params = 4 * M.layer_params / 2  # 4 layers, TP 2
    assert mem.weights == int(2 * params)
    assert mem.grads == int(4 * params)  # fp32 gradient buffer (the default reduce dtype)
    assert mem.optimizer == int(12 * params / 4)  # master + m + v, ZeRO-1 over 4
    block = block_activations(M, cm.job, 2, 2).saved_bytes
    assert mem.activations == int(3 * 4 * block)
    assert mem.reserve == RESERVE_FIXED_BYTES + int(RESERVE_FRACTION * 80 * GIB)
    assert mem.total == mem.weights + mem.grads + mem.optimizer + mem.activations + mem.reserve
    assert _mem(cm, zero_shards=0).optimizer == _mem(cm, zero_shards=1).optimizer


def test_full_recompute_keeps_block_inputs_plus_one_working_block() -> None:
    cm = _cm()
    tokens = 2 * 1024
    block = block_activations(M, cm.job, 2, 2)
    assert block.input_bytes == tokens / 2 * 1024 * 2  # the sequence shard, 16-bit
    kept = 3 * 4 * block.input_bytes  # 3 in flight x 4 layers
    assert _mem(cm, recompute=True).activations == int(kept + block.saved_bytes)
    plain = _cm(sequence_parallel=False)
    assert block_activations(M, plain.job, 2, 2).input_bytes == 2 * block.input_bytes


def test_last_stage_keeps_the_log_probabilities_and_works_on_the_logits() -> None:
    cm = _cm()
    last, middle = _mem(cm, last=True), _mem(cm)  # 3 micro-batches in flight, TP 2 (SP, VP)
    logits = 2 * 1024 * 32000 / 2  # 2 x 1024 tokens on the rank's V/2 vocabulary rows
    # kept per micro-batch: the fp32 log-probabilities, the int64 targets, and the eager
    # final RMSNorm's saved tensors (4h + 4 + 2ch bytes per token) on its sequence shard
    held = 4 * logits + 8 * 2048 + (4 * 1024 + 4 + 2 * 2 * 1024) * 1024
    # transient at the loss: the bf16 logits and the fp32 gradient of the log-probabilities
    transient = (2 + 4) * logits
    assert last.transient - middle.transient == transient
    assert last.activations - middle.activations == int(3 * held + transient)
    assert last.held_bytes == last.total - last.reserve - last.transient
    # 10 bytes per logit in all at the loss, as before the split
    assert loss_bytes(M, cm.job, 2, 2) == 10 * logits
    whole = _cm(vocab_parallel=False)
    assert loss_bytes(M, whole.job, 2, 2) == 2 * loss_bytes(M, cm.job, 2, 2)
    assert loss_bytes(M, _job(precision="fp32"), 1, 1) == 12 * 1024 * 32000


@pytest.mark.parametrize(("num_stages", "num_micro"), [(1, 1), (4, 8), (4, 2), (8, 3)])
def test_in_flight_1f1b_and_gpipe(num_stages: int, num_micro: int) -> None:
    for i in range(num_stages):
        assert in_flight_micro_batches("1f1b", i, num_stages, num_micro) == min(
            num_stages - i, num_micro
        )
        assert in_flight_micro_batches("gpipe", i, num_stages, num_micro) == num_micro


def test_in_flight_interleaved_is_at_least_1f1b() -> None:
    # Megatron's interleaved schedule, S = 4, v = 2, M = 8: the first stage runs
    # 2 (S - 1) + (v - 1) S = 10 warm-up chunks + 1, each half a stage: 5.5 -> 6 micro-batches
    # (Narayanan et al.: S (1 + (S - 1)/(S v)) = 5.5), the last (v - 1) S + 1 = 5 -> 3.
    got = [in_flight_micro_batches("interleaved-1f1b", i, 4, 8, 2) for i in range(4)]
    assert got == [6, 5, 4, 3]
    for i in range(4):
        assert got[i] >= in_flight_micro_batches("1f1b", i, 4, 8)
    assert in_flight_micro_batches("interleaved-1f1b", 0, 4, 2, 4) == 2
    assert in_flight_micro_batches("interleaved-1f1b", 1, 4, 8, 1) == 3


def test_tied_head_on_its_own_stage_holds_a_copy_of_the_embedding() -> None:
    emb, layer, h = TIED.vocab_size * TIED.hidden_size, TIED.layer_params, TIED.hidden_size
    assert stage_params(TIED, 4, True, True) == 4 * layer + emb + h == TIED.num_params
    assert stage_params(TIED, 2, True, False) == 2 * layer + emb
    assert stage_params(TIED, 2, False, True) == 2 * layer + emb + h
    untied = ModelSpec("untied", 4, 64, 4, 4, 256, 1000)
    assert stage_params(untied, 2, False, True) == 2 * layer + emb + h


def test_zb_h1_holds_min_s_m_micro_batches_on_every_stage() -> None:
    # 1F1B's S - i until the B, plus the i W's delayed (each counted whole)
    assert [in_flight_micro_batches("zb-h1", i, 4, 8) for i in range(4)] == [4] * 4
    assert [in_flight_micro_batches("zb-h1", i, 4, 2) for i in range(4)] == [2] * 4
    assert in_flight_micro_batches("zb-h1", 0, 4, 8) == in_flight_micro_batches("1f1b", 0, 4, 8)
