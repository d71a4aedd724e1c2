"""Which embedder the hook uses: the ``Embedder`` protocol, the client's own, or a frozen copy of the initial policy.

:class:`~monitor.trl.FPEMonitorCallback` takes ``embedder=`` if given, else the client's (single process), else
:func:`reference_embedder`: a ``monitor.embed.ModelEmbedder`` on a frozen deep copy of the policy taken at
``on_train_begin`` (the initial policy, i.e. the usual reference model), never the live policy.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

log = logging.getLogger("fpmon.trl")

Embedder = Callable[[list[str]], Tensor]
"""Texts → latents: ``list[str]`` of length n → float tensor (n, d) (``monitor.embed``'s protocol)."""


def client_embedder(client: Any) -> Any:
    """The embedder a ``MonitorClient`` was built with (``embedder=``), or None."""
    return getattr(client, "embedder", None) if client is not None else None


def reference_embedder(model: nn.Module, tokenizer: Any) -> Embedder:
    """A ``ModelEmbedder`` on a frozen deep copy of ``model`` (eval mode, no gradients), with a warning that says
    how much memory the copy takes; ``ValueError`` without a tokenizer."""
    from ..embed import ModelEmbedder

    if tokenizer is None:
        raise ValueError("no tokenizer: the trainer has no processing_class; pass embedder= to FPEMonitorCallback")
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    log.warning(
        "fpmon hook: embedding with a frozen copy of the initial policy (%.1f MB more memory); pass embedder= "
        "(e.g. ModelEmbedder(trainer.ref_model, tokenizer)) to avoid the copy",
        nbytes / 2**20,
    )
    frozen = copy.deepcopy(model)
    frozen.eval()
    frozen.requires_grad_(False)
    return ModelEmbedder(frozen, tokenizer)
