"""The keys of each Hugging Face family's config.json: the ones that decide the shape
(pydantic models, with each Hugging Face class's defaults) and the ones that do not change
it (read by nothing). `hf_config.py` turns them into a ModelSpec."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveFloat, PositiveInt


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Keys of every Hugging Face config (PretrainedConfig) that say nothing about the shape.
COMMON = words("""
    architectures model_type torch_dtype dtype transformers_version use_cache
    bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id
    initializer_range init_std task_specific_params tokenizer_class prefix id2label label2id
    num_labels problem_type finetuning_task return_dict output_hidden_states
    output_attentions torchscript pruned_heads is_decoder is_encoder_decoder
    tie_encoder_decoder chunk_size_feed_forward gradient_checkpointing max_length
    min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty
    no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences
    output_scores return_dict_in_generate forced_bos_token_id forced_eos_token_id
    remove_invalid_values exponential_decay_length_penalty suppress_tokens
    begin_suppress_tokens attn_implementation
""")
# rotary base, scaling and share: no parameters, no change to the matmul FLOPs
ROTARY = words("rope_theta rope_scaling rotary_emb_base rope_parameters partial_rotary_factor")


class Keys(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GPT2Keys(Keys):
    n_layer: PositiveInt
    n_embd: PositiveInt
    n_head: PositiveInt
    n_inner: PositiveInt | None = None  # Hugging Face: None = 4 * n_embd
    n_positions: PositiveInt
    vocab_size: PositiveInt
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True
    add_cross_attention: bool = False


class OPTKeys(Keys):
    num_hidden_layers: PositiveInt
    hidden_size: PositiveInt
    num_attention_heads: PositiveInt
    ffn_dim: PositiveInt
    max_position_embeddings: PositiveInt
    vocab_size: PositiveInt
    word_embed_proj_dim: PositiveInt | None = None  # None = hidden_size
    activation_function: str = "relu"
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False  # the key is `_remove_final_layer_norm`
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    tie_word_embeddings: bool = True


class NeoXKeys(Keys):
    num_hidden_layers: PositiveInt
    hidden_size: PositiveInt
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    max_position_embeddings: PositiveInt
    vocab_size: PositiveInt
    hidden_act: str = "gelu"
    rotary_pct: float = 0.25
    use_parallel_residual: bool = True
    attention_bias: bool = True
    tie_word_embeddings: bool = False


class LlamaKeys(Keys):
    """Llama, Mistral and Qwen2: the same keys, different biases and windows."""

    num_hidden_layers: PositiveInt
    hidden_size: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt | None = None  # None = multi-head attention
    intermediate_size: PositiveInt
    vocab_size: PositiveInt
    max_position_embeddings: PositiveInt | None = None
    hidden_act: str = "silu"
    head_dim: PositiveInt | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # llama only
    mlp_bias: bool = False  # llama only
    sliding_window: NonNegativeInt | None = None  # mistral, qwen2
    use_sliding_window: bool = False  # qwen2
    layer_types: list[str] | None = None  # qwen2 (transformers 5): each layer's attention
    # arithmetic the runtime computes with (no change to the shape); Hugging Face defaults
    rms_norm_eps: PositiveFloat = 1e-6
    rope_theta: PositiveFloat | None = None  # transformers 4; None: 10000 or rope_parameters'
    rope_scaling: dict[str, Any] | None = None  # transformers 4: rescaled frequencies
    rope_parameters: dict[str, Any] | None = None  # transformers 5: rope_theta, rope_type


LLAMA_IGNORED = words("pretraining_tp attention_dropout rotary_emb_base partial_rotary_factor")
