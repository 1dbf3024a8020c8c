"""The one home of ragkit's settings: folders, config files, threads, the default model, bundled data.

Every setting is read here, from the environment, when it is asked for (so tests and long-lived apps
see a changed variable), and nowhere else:

    RAGKIT_CACHE_DIR       cache folder (tiktoken files, token counts, converted local model, eval cache)
                           default $XDG_CACHE_HOME/ragkit, else ~/.cache/ragkit
    RAGKIT_EVAL_CACHE      eval response cache file, default <cache folder>/eval-cache.sqlite
    RAGKIT_HOME            data folder (the cost ledger), default $XDG_DATA_HOME/ragkit, else ~/.local/share/ragkit
    RAGKIT_CONFIG          user model overrides, default $XDG_CONFIG_HOME/ragkit/models.toml, else
                           ~/.config/ragkit/models.toml; the project file is ./ragkit.toml
    RAGKIT_MODEL           the model every command and Session uses when none is given (default gpt-4o-mini)
    RAGKIT_EMBED_BACKEND   embedding backend for new indexes: torch, onnx, onnx-int8 (default), openvino
    RAGKIT_EMBED_THREADS   torch/ONNX Runtime/FAISS threads for embedding, default half the cores (at most 8)
    RAGKIT_THREADS         torch threads for the embedded local model, default all cores

Bundled data (the default eval corpus, questions, key-value records and suites) is found through the
installed package, never relative to a source checkout, so an installed wheel runs `ragkit eval` as is.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from ragkit.errors import ConfigError

# One default for `ask`, `plan`, `count`, `cost`, `eval` and Session: the cheap general model, so a
# command run without -m plans for (and spends on) the model `ask` would use.
DEFAULT_MODEL = "gpt-4o-mini"


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _xdg(var: str, fallback: str) -> Path:
    return Path(_env(var) or Path.home() / fallback).expanduser()


# --------------------------------------------------------------------------- folders and files

def cache_dir() -> Path:
    """ragkit's cache folder: content-addressed data that can be rebuilt."""
    return Path(_env("RAGKIT_CACHE_DIR")).expanduser() if _env("RAGKIT_CACHE_DIR") else \
        _xdg("XDG_CACHE_HOME", ".cache") / "ragkit"


def eval_cache_path() -> Path:
    """The eval response cache (SQLite)."""
    return Path(_env("RAGKIT_EVAL_CACHE")).expanduser() if _env("RAGKIT_EVAL_CACHE") else \
        cache_dir() / "eval-cache.sqlite"


def data_home() -> Path:
    """ragkit's data folder: what cannot be rebuilt (the cost ledger)."""
    return Path(_env("RAGKIT_HOME")).expanduser() if _env("RAGKIT_HOME") else \
        _xdg("XDG_DATA_HOME", ".local/share") / "ragkit"


def user_config_path() -> Path:
    """The user's model overrides."""
    return Path(_env("RAGKIT_CONFIG")).expanduser() if _env("RAGKIT_CONFIG") else \
        _xdg("XDG_CONFIG_HOME", ".config") / "ragkit" / "models.toml"


def project_config_path() -> Path:
    """The project's model overrides, in the folder ragkit runs from; they win over the user's."""
    return Path.cwd() / "ragkit.toml"


# --------------------------------------------------------------------------- model and threads

def env_model() -> str | None:
    """$RAGKIT_MODEL when set (`ragkit cost` without -m lists every model otherwise)."""
    return _env("RAGKIT_MODEL") or None


def default_model() -> str:
    """$RAGKIT_MODEL, else DEFAULT_MODEL: the model used when a command or Session is given none."""
    return _env("RAGKIT_MODEL") or DEFAULT_MODEL


def _threads(var: str, default: int) -> int:
    raw = _env(var)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a whole number of threads, e.g. {var}=2; got {raw!r}.") from None
    if value < 1:
        raise ConfigError(f"{var} must be at least 1, got {value}; unset it to use the default ({default}).")
    return value


def embed_threads(*, side_by_side: bool = False) -> int:
    """Threads for embedding (and FAISS queries). Intra-op threads (torch; `side_by_side=False`) default to
    half the cores, at most 8: they meet at a barrier every layer, so on a 2-core machine a second thread
    loses as soon as anything else runs (onnx-int8 against a busy loop: 33 chunks/s on one intra-op thread,
    22 on two). Side-by-side runs (ONNX Runtime on the CPU: one text per run on a single-threaded session,
    `side_by_side=True`) default to every core, at most 8: a busy core slows one run, not all of them
    (benchmarks/bench_embed_backends.py, threads table)."""
    cores = os.cpu_count() or 2
    return _threads("RAGKIT_EMBED_THREADS", max(1, min(8, cores if side_by_side else cores // 2)))


def embed_backend() -> str | None:
    """$RAGKIT_EMBED_BACKEND, or None (ragkit.embed_export checks the name and holds the default)."""
    return _env("RAGKIT_EMBED_BACKEND") or None


def local_threads() -> int:
    """torch threads for the embedded local model. Default all cores."""
    return _threads("RAGKIT_THREADS", max(1, os.cpu_count() or 1))


# --------------------------------------------------------------------------- offline environment

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",            # load by hub name fails fast instead of retrying the network for ~70 s
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def set_offline_env() -> None:
    """Nothing may download at run time: make the HF libraries fail fast. A value the user set is kept."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)


# --------------------------------------------------------------------------- bundled data

def bundled(*parts: str) -> Path:
    """A file or folder under ragkit/data/ in the installed package (a wheel ships them as package data)."""
    return Path(str(resources.files("ragkit").joinpath("data", *parts)))
