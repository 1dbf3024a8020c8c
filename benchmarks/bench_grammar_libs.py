"""Compares the JSON-schema constraint libraries that install here, on the embedded model's tokenizer.

For each library and schema: compile time, and per-token mask time while walking a valid answer's
tokens (each token must be allowed by the mask: correctness), then whether an invalid continuation is
refused. Reproduce:
    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/bench_grammar_libs.py
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from ragkit.local_model import ensure_converted, load_tokenizer

SCHEMAS = {
    "flat": ({"type": "object", "properties": {"name": {"type": "string"}, "score": {"type": "number"},
                                               "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "score", "tags"], "additionalProperties": False},
             {"name": "Ada Lovelace", "score": 9.5, "tags": ["math", "poetry"]},
             '{"name": "Ada", "score": "high"'),
    "nested_enum_null": ({"type": "object", "properties": {
        "answer": {"type": "object", "properties": {
            "title": {"type": "string"}, "year": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "kind": {"enum": ["person", "place", "thing"]}}, "required": ["title", "year", "kind"],
            "additionalProperties": False},
        "citations": {"type": "object", "properties": {"title": {"type": "array", "items": {"type": "integer"}}},
                      "required": ["title"], "additionalProperties": False}},
        "required": ["answer", "citations"], "additionalProperties": False},
        {"answer": {"title": "On the Origin of Species", "year": None, "kind": "thing"}, "citations": {"title": [1, 2]}},
        '{"answer": {"title": "x", "year": null, "kind": "animal"'),
}


def walk(tokenizer, ids, allowed_fn, advance_fn):
    times, ok = [], True
    for t in ids:
        t0 = time.perf_counter()
        allowed = allowed_fn()
        times.append(time.perf_counter() - t0)
        if not allowed(t):
            ok = False
            break
        advance_fn(t)
    return ok, times


def bench_llguidance(tokenizer, vocab, schema, good_ids, bad_ids):
    import llguidance
    import llguidance.hf
    import llguidance.torch as llt

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    tok_s = time.perf_counter() - t0
    results = []
    for ids in (good_ids, bad_ids):
        t0 = time.perf_counter()
        m = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(schema))
        compile_s = time.perf_counter() - t0
        mask = llt.allocate_token_bitmask(1, vocab)

        def allowed():
            llt.fill_next_token_bitmask(m, mask, 0)
            logits = torch.zeros(vocab)
            llt.apply_token_bitmask_inplace(logits, mask)
            return lambda t: bool(logits[t] > -1e30)
        results.append((compile_s, *walk(tokenizer, ids, allowed, m.consume_token)))
    return tok_s, results


def bench_xgrammar(tokenizer, vocab, schema, good_ids, bad_ids):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    tok_s = time.perf_counter() - t0
    results = []
    for ids in (good_ids, bad_ids):
        t0 = time.perf_counter()
        m = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))
        compile_s = time.perf_counter() - t0
        mask = xgr.allocate_token_bitmask(1, vocab)

        def allowed():
            m.fill_next_token_bitmask(mask)
            logits = torch.zeros(1, vocab)
            xgr.apply_token_bitmask_inplace(logits, mask)
            return lambda t: bool(logits[0, t] > -1e30)
        results.append((compile_s, *walk(tokenizer, ids, allowed, m.accept_token)))
    return tok_s, results


def bench_outlines(tokenizer, vocab, schema, good_ids, bad_ids):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    byte_dec = {v: k for k, v in _bytes_to_unicode().items()}
    mapping: dict = {}
    for tok, i in tokenizer.get_vocab().items():
        if i == eos or tok in tokenizer.added_tokens_encoder:
            continue
        try:
            b = bytes(byte_dec[c] for c in tok)
        except KeyError:
            continue
        mapping.setdefault(b, []).append(i)
    voc = Vocabulary(eos, mapping)
    tok_s = time.perf_counter() - t0
    results = []
    for ids in (good_ids, bad_ids):
        t0 = time.perf_counter()
        index = Index(build_regex_from_schema(json.dumps(schema)), voc)
        guide = Guide(index)
        compile_s = time.perf_counter() - t0

        def allowed():
            s = set(guide.get_tokens())
            return lambda t: t in s
        results.append((compile_s, *walk(tokenizer, ids, allowed, guide.advance)))
    return tok_s, results


def bench_lmfe(tokenizer, vocab, schema, good_ids, bad_ids):
    from lmformatenforcer import JsonSchemaParser, TokenEnforcer
    from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

    t0 = time.perf_counter()
    data = build_token_enforcer_tokenizer_data(tokenizer, vocab_size=vocab)
    tok_s = time.perf_counter() - t0
    results = []
    for ids in (good_ids, bad_ids):
        t0 = time.perf_counter()
        enf = TokenEnforcer(data, JsonSchemaParser(schema))
        compile_s = time.perf_counter() - t0
        seq: list[int] = []

        def allowed():
            s = set(enf.get_allowed_tokens(seq).allowed_tokens if hasattr(enf.get_allowed_tokens(seq), "allowed_tokens")
                    else enf.get_allowed_tokens(seq))
            return lambda t: t in s
        results.append((compile_s, *walk(tokenizer, ids, allowed, seq.append)))
    return tok_s, results


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main() -> None:
    path = ensure_converted()
    tokenizer = load_tokenizer(path)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    libs = {"llguidance": bench_llguidance, "xgrammar": bench_xgrammar, "outlines-core": bench_outlines,
            "lm-format-enforcer": bench_lmfe}
    only = sys.argv[1:] or list(libs)
    print(f"{'library':<20} {'schema':<18} {'setup s':>8} {'compile s':>9} {'mask ms/tok':>11} "
          f"{'valid ok':>8} {'invalid refused':>15}")
    for name in only:
        for sname, (schema, good, bad) in SCHEMAS.items():
            good_ids = tokenizer.encode(json.dumps(good), add_special_tokens=False)
            bad_ids = tokenizer.encode(bad, add_special_tokens=False)
            try:
                tok_s, [(c_s, ok, times), (_, bad_ok, _)] = libs[name](tokenizer, vocab, schema, good_ids, bad_ids)
            except Exception as exc:  # noqa: BLE001 - a library that fails is a result
                print(f"{name:<20} {sname:<18} failed: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            ms = statistics.median(times) * 1000 if times else float("nan")
            print(f"{name:<20} {sname:<18} {tok_s:>8.2f} {c_s:>9.3f} {ms:>11.3f} {str(ok):>8} {str(not bad_ok):>15}")


if __name__ == "__main__":
    main()
