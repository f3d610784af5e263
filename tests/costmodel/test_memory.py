"""Per-device memory: every term by hand, in-flight micro-batches, tied embeddings."""

from __future__ import annotations

from polychip.costmodel.memory import stage_params
from polychip.spec.model import ModelSpec

TIED = ModelSpec("tied", 4, 64, 4, 4, 256, 1000, tie_embeddings=True)


def test_tied_head_on_its_own_stage_holds_a_copy_of_the_embedding() -> None:
    emb, layer, h = TIED.vocab_size * TIED.hidden_size, TIED.layer_params, TIED.hidden_size
    # One stage: the embedding once, used twice.
    assert stage_params(TIED, 4, True, True) == 4 * layer + emb + h == TIED.num_params
    # Two stages: the last stage's output projection is a real tensor there too.
    assert stage_params(TIED, 2, True, False) == 2 * layer + emb
    assert stage_params(TIED, 2, False, True) == 2 * layer + emb + h
    untied = ModelSpec("untied", 4, 64, 4, 4, 256, 1000)
    assert stage_params(untied, 2, False, True) == 2 * layer + emb + h
