"""The single-process reference every parallel run is compared with: the full model trained
on the whole global batch, same seed, same data, same optimizer (weight decay on matrices
only), the same learning-rate schedule and, when the config clips, torch's own
``clip_grad_norm_`` over the whole model."""

from __future__ import annotations

import torch

from polychip.plan import Plan
from polychip.runtime.data import SampleStream, open_source
from polychip.runtime.hf_weights import load_hf_into_stage
from polychip.runtime.model import build_full_model, loss_fn
from polychip.runtime.param_groups import decays, groups_of
from polychip.runtime.train import TrainConfig, make_optimizer

CORPUS_BYTES = 32 * 1024


def single_process(plan: Plan, config: TrainConfig, *, norms: list[float] | None = None
                   ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """`config.steps` steps of single-process training on every sample of each global batch
    (float64; from `config.init_from`'s Hugging Face weights when set): the losses and the
    final parameters by name. ``norms``: a list to which each step's gradient norm before
    clipping is appended (when the config clips)."""
    model = build_full_model(plan.model, seed=config.seed, dtype=torch.float64)
    if config.init_from:
        load_hf_into_stage(model, config.init_from)
    params = list(model.parameters())
    optimizer = make_optimizer(config, groups_of(((p, decays(p.shape)) for p in params),
                                                 config.weight_decay))
    schedule = config.lr_schedule_of()
    source = open_source(config.data, plan.model.vocab_size, config.max_corpus_bytes,
                         tokenizer=config.tokenizer)
    stream = SampleStream(source, plan.job.seq_len, config.seed)
    losses = []
    for step in range(config.steps):
        x, y = stream.batch_for(step, range(plan.job.global_batch))
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if config.clip_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
            if norms is not None:
                norms.append(float(norm))
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        optimizer.step()
        losses.append(loss.item())
    return losses, {n: p.detach() for n, p in model.named_parameters()}


def assert_saved_model_is_the_reference(ckpt_dir, plan: Plan, config: TrainConfig, steps: int,
                                        atol: float = 1e-12) -> None:
    """The newest complete checkpoint in ``ckpt_dir`` is of step ``steps`` and its fp32
    master weights equal ``plan``'s single-process training under ``config`` to ``atol``."""
    from polychip.runtime.checkpoint import _ShardReader
    from polychip.runtime.checkpoint_manifest import latest_complete, read_manifest

    folder = latest_complete(ckpt_dir)
    assert folder is not None and read_manifest(folder).step == steps
    reader = _ShardReader(folder, read_manifest(folder))
    _, ref = single_process(plan, config)
    for name, want in ref.items():
        torch.testing.assert_close(reader.full(name, "param"), want, rtol=0, atol=atol,
                                   msg=name)
