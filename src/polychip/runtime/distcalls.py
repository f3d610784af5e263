"""The tensor forms of all-gather and reduce-scatter under either of their names: torch 2.13
calls them `all_gather_single` / `reduce_scatter_single` (the older `all_gather_into_tensor`
/ `reduce_scatter_tensor` warn there that they are deprecated); the torch of the GPU images
we run on (2.11) has only the older names."""

from __future__ import annotations

import torch.distributed as dist

all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_single = (getattr(dist, "reduce_scatter_single", None)
                         or dist.reduce_scatter_tensor)
