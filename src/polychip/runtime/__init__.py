"""Runtime: executes a plan with torch.distributed. The only polychip layer that imports torch.

Import the submodules directly (``polychip.runtime.model``, ``.data``, ``.grads``,
``.emulate``); this package file stays empty so that importing it costs nothing.
"""
