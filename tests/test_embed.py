"""Embedder: the bundled MiniLM loads offline by path; vectors are normalised float32; shared and thread-safe."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

os.environ.setdefault("RAGKIT_EMBED_THREADS", "1")

from ragkit.embed import DEFAULT_EMBED_MODEL, get_embedder, load_piece_tokenizer, resolve_model  # noqa: E402
from ragkit.errors import ConfigError  # noqa: E402

TEXTS = ["The cat sat on the mat.", "A feline rested on a rug.", "Stock markets fell sharply on Monday.",
         "Quarterly earnings beat expectations.", "Photosynthesis converts light into chemical energy."]


def test_default_model_offline_normalised_float32():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    emb = get_embedder()
    assert emb.name == DEFAULT_EMBED_MODEL and emb.dim == 384 and emb.max_tokens == 256
    assert emb.threads == 1
    v = emb.encode(TEXTS)
    assert v.dtype == np.float32 and v.shape == (5, 384) and v.flags["C_CONTIGUOUS"]
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.5 > sims[0, 2]  # paraphrase close, unrelated far
    assert emb.encode([]).shape == (0, 384)


def test_batching_does_not_change_vectors():
    emb = get_embedder()
    whole = emb.encode(TEXTS, batch_size=64)
    one_by_one = np.stack([emb.encode([t])[0] for t in TEXTS])
    assert np.allclose(whole, one_by_one, atol=1e-5)


def test_one_embedder_per_process_and_thread_safe():
    assert get_embedder() is get_embedder("all-MiniLM-L6-v2") is get_embedder("sentence-transformers/all-MiniLM-L6-v2")
    emb = get_embedder()
    expected = emb.encode(TEXTS)
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = emb.encode(TEXTS)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        assert np.allclose(r, expected, atol=1e-5)


def test_other_model_by_path():
    path = resolve_model(None)[1]
    emb = get_embedder(path)  # any sentence-transformers folder works; recorded by its path
    assert emb.name == path and emb is not get_embedder()
    assert np.allclose(emb.encode(TEXTS[:2]), get_embedder().encode(TEXTS[:2]), atol=1e-5)
    assert load_piece_tokenizer(path).max_tokens == 256


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="offline"):
        get_embedder(str(tmp_path / "not-a-model"))


def test_window_truncation_is_real():
    """Why chunks must fit: text past the window does not change the vector at all."""
    emb = get_embedder()
    tok = load_piece_tokenizer()
    base = "word " * 300
    assert tok.count(base) > 256
    a, b = emb.encode([base + "completely different ending about volcanoes", base + "and about oceans"])
    assert np.allclose(a, b, atol=1e-6)
