"""The model registry: context window, practical limit, prices, latency and tokenizer of each model.

Built-in figures live in ragkit/data/models.toml. Users add or override models with the same
[models.ID] tables in a user file (~/.config/ragkit/models.toml, or $RAGKIT_CONFIG) and a
project file (./ragkit.toml); later files win field by field. One validator checks all of them
(types, ranges, known fields) and names the file, model and field of any bad value.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import threading
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ragkit import config
from ragkit.config import project_config_path, user_config_path
from ragkit.errors import ConfigError, UnknownModelError

PROVIDERS = ("openai", "anthropic", "local")
ENCODINGS = ("cl100k_base", "o200k_base")
# How a model's API enforces a JSON Schema answer (ragkit/structured.py), per provider; "none": validation only.
STRUCTURED_OUTPUT = {"openai": ("strict", "json_mode", "none"), "anthropic": ("tool", "none"),
                     "local": ("grammar", "none")}
DEFAULT_STRUCTURED_OUTPUT = {"openai": "json_mode", "anthropic": "tool", "local": "grammar"}  # the tiktoken encodings ragkit ships (tokens.py has their files)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    aliases: tuple[str, ...]
    provider: str
    api_model: str
    base_url: str | None
    api_key_env: str | None
    context_window_tokens: int
    practical_limit_tokens: int
    practical_low_tokens: int
    practical_high_tokens: int
    limit_source: str
    max_output_tokens: int
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    ttft_s: float
    tokens_per_s: float
    latency_source: str
    good_for: str
    encoding: str
    exact_tokens: bool
    token_margin: float
    structured_output: str = "none"   # strict | json_mode | tool | grammar | none (STRUCTURED_OUTPUT)
    # Measured accuracy per task label (`ragkit compare --save`): {"qa": {"accuracy": 0.9, "n": 40, ...}}
    accuracy: dict | None = None

    def measured_accuracy(self, task: str) -> dict | None:
        """This model's measured accuracy on a task (what routing's quality floor reads), or None."""
        return (self.accuracy or {}).get(task)

    @property
    def limit_is_measured(self) -> bool:
        return self.limit_source.startswith("measured")

    @property
    def limit_is_default(self) -> bool:
        """The practical limit (and its range) is a documented default, not the article's or a measurement."""
        return _is_default(self.limit_source)

    @property
    def latency_is_default(self) -> bool:
        """ttft_s and tokens_per_s are a documented default, not the article's or a measurement."""
        return _is_default(self.latency_source)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d


def _is_default(source: str) -> bool:
    return not source.startswith(("article", "measured"))


# ----------------------------------------------------------------------------- the schema
# One validator for the built-in registry and every override file: each field's value is checked for its
# type and range as it is read (so the error names the file that set it), then each merged model is
# checked as a whole. Nothing is coerced: `aliases = "4o"` or `exact_tokens = "no"` is an error, not a guess.


class _Bad(ValueError):
    """A field's value is wrong: the message says what it must be. `value`: the wrong part, when it is
    nested inside the field's value (a task's accuracy inside the accuracy table)."""

    NOT_GIVEN = object()

    def __init__(self, message: str, value=NOT_GIVEN):
        super().__init__(message)
        self.value = value


def _text(v):
    if not isinstance(v, str) or not v.strip():
        raise _Bad("must be a non-empty string in quotes")
    return v


def _any_text(v):
    if not isinstance(v, str):
        raise _Bad("must be a string in quotes")
    return v


def _optional_text(v):
    if not isinstance(v, str):
        raise _Bad('must be a string in quotes ("" for none)')
    return v or None


def _url(v):
    v = _optional_text(v)
    if v is not None and not v.startswith(("http://", "https://")):
        raise _Bad("must be an http:// or https:// URL")
    return v


def _env_name(v):
    v = _optional_text(v)
    if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        raise _Bad("must be the NAME of an environment variable (letters, digits, _), never the key itself")
    return v


def _names(v):
    if not isinstance(v, list) or not all(isinstance(a, str) and a.strip() for a in v):
        raise _Bad("must be a list of names in brackets")
    return tuple(v)


def _one_of(choices: tuple[str, ...]):
    def check(v):
        if v not in choices:
            raise _Bad("must be one of " + ", ".join(f'"{c}"' for c in choices))
        return v
    return check


def _tokens(v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise _Bad("must be a whole number of tokens, at least 1")
    return v


def _amount(v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise _Bad("must be a finite number, 0 or more")
    return float(v)


_ACCURACY_KEYS = {"accuracy": "a fraction from 0 to 1", "n": "a whole number of questions, at least 1",
                  "low": "a fraction from 0 to 1", "high": "a fraction from 0 to 1", "date": "text",
                  "golden": "text", "source": "text", "strategy": "text"}


def _accuracy(v):
    """{task = {accuracy = 0.9, n = 40, low, high, date, golden, source, strategy}}: what compare --save writes."""
    if not isinstance(v, dict):
        raise _Bad("must be a table of tasks, each a table like {accuracy = 0.9, n = 40}")
    for task, m in v.items():
        if not isinstance(m, dict):
            raise _Bad(f'for task "{task}" must be a table like {{accuracy = 0.9, n = 40}}', m)
        unknown = set(m) - set(_ACCURACY_KEYS)
        if unknown:
            raise _Bad(f'has an unknown key "{sorted(unknown)[0]}" for task "{task}" (known: {", ".join(_ACCURACY_KEYS)})')
        if "accuracy" not in m or "n" not in m:
            raise _Bad(f'needs accuracy and n for task "{task}"')
        for key in ("accuracy", "low", "high"):
            if key in m and (not isinstance(m[key], (int, float)) or isinstance(m[key], bool) or not 0 <= m[key] <= 1):
                raise _Bad(f'{key} for task "{task}" must be {_ACCURACY_KEYS[key]}', m[key])
        if not isinstance(m["n"], int) or isinstance(m["n"], bool) or m["n"] < 1:
            raise _Bad(f'n for task "{task}" must be {_ACCURACY_KEYS["n"]}', m["n"])
        for key in ("date", "golden", "source", "strategy"):
            if key in m and not isinstance(m[key], str):
                raise _Bad(f'{key} for task "{task}" must be text in quotes', m[key])
    return {task: dict(m) for task, m in v.items()}


def _flag(v):
    if not isinstance(v, bool):
        raise _Bad("must be true or false, without quotes")
    return v


@dataclass(frozen=True)
class _Field:
    check: Callable[[object], object]   # returns the value, or raises _Bad saying what it must be
    example: str                        # a correct line, shown in the error
    default: object = None
    required: bool = True


_SCHEMA: dict[str, _Field] = {
    "name": _Field(_text, 'name = "My model"'),
    "aliases": _Field(_names, 'aliases = ["my-model", "mm"]', (), False),
    "provider": _Field(_one_of(PROVIDERS), 'provider = "openai"'),
    "api_model": _Field(_text, 'api_model = "gpt-4o-2024-11-20"'),
    "base_url": _Field(_url, 'base_url = "http://127.0.0.1:8000/v1"', None, False),
    "api_key_env": _Field(_env_name, 'api_key_env = "OPENAI_API_KEY"', None, False),
    "context_window_tokens": _Field(_tokens, "context_window_tokens = 128000"),
    "practical_limit_tokens": _Field(_tokens, "practical_limit_tokens = 32000"),
    "practical_low_tokens": _Field(_tokens, "practical_low_tokens = 32000", None, False),   # default: the limit
    "practical_high_tokens": _Field(_tokens, "practical_high_tokens = 40000", None, False),  # default: the limit
    "limit_source": _Field(_text, 'limit_source = "measured: ragkit eval needle, 2025-01-31"',
                           "default: set by the user without a source", False),
    "max_output_tokens": _Field(_tokens, "max_output_tokens = 4096"),
    "input_usd_per_mtok": _Field(_amount, "input_usd_per_mtok = 2.5"),
    "output_usd_per_mtok": _Field(_amount, "output_usd_per_mtok = 10.0"),
    "ttft_s": _Field(_amount, "ttft_s = 0.8", 0.0, False),
    "tokens_per_s": _Field(_amount, "tokens_per_s = 70", 0.0, False),
    "latency_source": _Field(_text, 'latency_source = "measured: 2K-token prompts, 2025-01-31"',
                             "default: set by the user without a source", False),
    "good_for": _Field(_any_text, 'good_for = "Classification, routing"', "", False),
    "encoding": _Field(_one_of(ENCODINGS), 'encoding = "o200k_base"'),
    "exact_tokens": _Field(_flag, "exact_tokens = false"),
    "token_margin": _Field(_amount, "token_margin = 0.15", 0.0, False),
    "structured_output": _Field(_one_of(("strict", "json_mode", "tool", "grammar", "none")),
                                'structured_output = "json_mode"', None, False),  # default: per provider
    "accuracy": _Field(_accuracy, "accuracy = { qa = { accuracy = 0.9, n = 40 } }", None, False),
}
# Each source vouches for the figures beside it in the file that sets it: a file that sets a figure
# without its source sets the default source too, so an overridden figure is never shown as the article's.
_SOURCES = {"limit_source": ("practical_limit_tokens", "practical_low_tokens", "practical_high_tokens"),
            "latency_source": ("ttft_s", "tokens_per_s")}
_TOP_LEVEL = ("models", "router", "budget")   # [router] and [budget]: ragkit.route reads them
_REQUIRED = tuple(n for n, f in _SCHEMA.items() if f.required)
BUILTIN_REGISTRY = config.bundled("models.toml")

_lock = threading.Lock()
_cache: dict[tuple, dict[str, ModelSpec]] = {}


def _shown(v) -> str:
    """A value as the user wrote it in TOML, for error messages."""
    if isinstance(v, str):
        return f'the string "{v}"'
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return "a table"
    return repr(v) if not isinstance(v, float) or math.isfinite(v) else str(v)


def _toml(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _fix(name: str, value) -> str:
    """The line to write instead: the user's value in the form the field takes when there is one
    ("4o" -> ["4o"], "no" -> false, "128000" -> 128000), else the field's example."""
    words = {"true": True, "yes": True, "false": False, "no": False}
    candidates = []
    if isinstance(value, str):
        candidates += [[value], words.get(value.strip().lower())]
        for parse in (int, float):
            with contextlib.suppress(ValueError):
                candidates.append(parse(value.strip()))
    elif isinstance(value, float) and value.is_integer():
        candidates.append(int(value))
    elif type(value) is int and value in (0, 1):
        candidates.append(bool(value))
    for candidate in candidates:
        with contextlib.suppress(_Bad):
            if candidate is not None:
                _SCHEMA[name].check(candidate)
                return f"{name} = {_toml(candidate)}"
    return "e.g. " + _SCHEMA[name].example


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else "known: " + ", ".join(known) + "."


def _where(path: Path, model_id: str) -> str:
    return f'{path}: [models."{model_id}"]'


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start + 1} cannot be decoded); "
                          "TOML files must be UTF-8, so re-save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}). Fix the file or move it aside.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}.") from None


def load_tables(path: Path) -> dict[str, dict]:
    """The [models.ID] tables of one registry or override file, every field checked; ConfigError names
    the file, the model and the field, and shows a correct line."""
    data = _read_toml(path)
    for key in data:
        if key not in _TOP_LEVEL:
            raise ConfigError(f'{path}: unknown table or key "{key}", {_did_you_mean(key, _TOP_LEVEL)} '
                              'ragkit reads [models."ID"], [router] and [budget] tables.')
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f'{path}: models must be tables, one per model: [models."ID"].')
    tables: dict[str, dict] = {}
    for model_id, table in models.items():
        if not model_id.strip():
            raise ConfigError(f'{path}: a model id cannot be empty; write [models."my-model"].')
        if not isinstance(table, dict):
            raise ConfigError(f'{_where(path, model_id)} must be a table of fields, e.g. {_SCHEMA["name"].example}.')
        checked = {}
        for name, value in table.items():
            field = _SCHEMA.get(name)
            if field is None:
                raise ConfigError(f'{_where(path, model_id)} has an unknown field "{name}", '
                                  f"{_did_you_mean(name, _SCHEMA)}")
            try:
                checked[name] = field.check(value)
            except _Bad as bad:
                wrong = value if bad.value is _Bad.NOT_GIVEN else bad.value
                raise ConfigError(f"{_where(path, model_id)} {name} {bad}, not {_shown(wrong)}; "
                                  f"write {_fix(name, value)}.") from None
        for source, figures in _SOURCES.items():
            if source not in checked and any(f in checked for f in figures):
                checked[source] = _SCHEMA[source].default
        tables[model_id] = checked
    return tables


def _override_files() -> list[Path]:
    return [p for p in (user_config_path(), project_config_path()) if p.is_file()]


def _build(model_id: str, table: dict, origin: dict[str, Path]) -> ModelSpec:
    """One model from its merged fields; `origin` maps each field to the file that set it."""
    missing = [n for n in _REQUIRED if n not in table]
    if missing:
        files = sorted({str(p) for p in origin.values()})
        raise ConfigError(f'{" and ".join(files)}: [models."{model_id}"] is a new model and lacks '
                          f"{', '.join(missing)}; add e.g. {_SCHEMA[missing[0]].example} (every new model needs "
                          f"{', '.join(_REQUIRED)}).")
    values = {"id": model_id}
    for name, field in _SCHEMA.items():
        values[name] = table.get(name, field.default)
    for side in ("practical_low_tokens", "practical_high_tokens"):
        if values[side] is None:  # a range not given is the limit itself, set where the limit was
            values[side] = values["practical_limit_tokens"]
            origin = {side: origin["practical_limit_tokens"], **origin}
    if values["structured_output"] is None:
        values["structured_output"] = DEFAULT_STRUCTURED_OUTPUT[values["provider"]]
    elif values["structured_output"] not in STRUCTURED_OUTPUT[values["provider"]]:
        raise ConfigError(f'{_where(origin["structured_output"], model_id)} structured_output = '
                          f'"{values["structured_output"]}" does not apply to provider "{values["provider"]}"; '
                          f"use one of {', '.join(repr(c) for c in STRUCTURED_OUTPUT[values['provider']])}.")
    window = values["context_window_tokens"]
    for name in ("practical_limit_tokens", "practical_low_tokens", "practical_high_tokens", "max_output_tokens"):
        if values[name] > window:
            raise ConfigError(f'{_where(origin[name], model_id)} {name} ({values[name]}) must be between 1 and the '
                              f"context window, context_window_tokens ({window}, set in {origin['context_window_tokens']}); "
                              f"write a value of at most {window}.")
    if values["practical_low_tokens"] > values["practical_high_tokens"]:
        raise ConfigError(f"{_where(origin['practical_low_tokens'], model_id)} practical_low_tokens "
                          f"({values['practical_low_tokens']}) is above practical_high_tokens "
                          f"({values['practical_high_tokens']}, set in {origin['practical_high_tokens']}); "
                          "the low end of the range must not exceed the high end.")
    return ModelSpec(**values)


def _set_in(origins: dict[str, dict[str, Path]], model_id: str, field: str) -> Path:
    """The file that set a field; an id lives where its model's name was written."""
    return origins[model_id]["name" if field == "id" else field]


def _check_names_are_unique(specs: dict[str, ModelSpec], origins: dict[str, dict[str, Path]]) -> None:
    """Ids and aliases are matched case-insensitively, so each may name one model only."""
    owner: dict[str, tuple[str, str]] = {}  # lower-cased name -> (model id, "id" | "aliases")
    for spec in specs.values():
        for field, name in [("id", spec.id)] + [("aliases", a) for a in spec.aliases]:
            mine, theirs = (spec.id, field), owner.setdefault(name.lower(), (spec.id, field))
            if theirs[0] == spec.id:
                continue
            if _set_in(origins, *mine) == BUILTIN_REGISTRY:  # blame the override: the built-ins never clash
                mine, theirs = theirs, mine
            (model_id, field), other = mine, theirs[0]
            raise ConfigError(f'{_where(_set_in(origins, *mine), model_id)} {field}: '
                              f'"{name}" already names the model {other}, and a name may mean one model only; '
                              f'pick another name (to change {other} itself, write [models."{other}"]).')


def _registry() -> dict[str, ModelSpec]:
    files = _override_files()
    key = tuple((str(p), p.stat().st_mtime_ns) for p in files)
    with _lock:
        if key not in _cache:
            tables: dict[str, dict] = {}
            origins: dict[str, dict[str, Path]] = {}
            for path in (BUILTIN_REGISTRY, *files):  # later files win field by field
                for model_id, table in load_tables(path).items():
                    tables.setdefault(model_id, {}).update(table)
                    origins.setdefault(model_id, {}).update(dict.fromkeys(table, path))
            specs = {mid: _build(mid, t, origins[mid]) for mid, t in tables.items()}
            _check_names_are_unique(specs, origins)
            _cache.clear()
            _cache[key] = specs
        return _cache[key]


def list_models() -> list[ModelSpec]:
    return list(_registry().values())


def get_model(name: str | ModelSpec) -> ModelSpec:
    """A model by id or alias (case-insensitive); UnknownModelError lists close matches."""
    if isinstance(name, ModelSpec):
        return name
    registry = _registry()
    wanted = name.strip().lower()
    for spec in registry.values():
        if wanted == spec.id.lower() or wanted in (a.lower() for a in spec.aliases):
            return spec
    names = [spec.id for spec in registry.values()] + [a for s in registry.values() for a in s.aliases]
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model '{name}'.{hint} `ragkit models` lists them all; add your own in "
                            f"{project_config_path().name} or {user_config_path()}.")


def save_limit_override(model_id: str, practical_limit_tokens: int, source: str,
                        path: Path | None = None) -> Path:
    """Writes a practical-limit override (e.g. a measured one) into a TOML overrides file, keeping its comments."""
    spec = get_model(model_id)
    if int(practical_limit_tokens) < 1:
        raise ConfigError(f"a practical limit must be at least 1 token, got {practical_limit_tokens}.")
    limit = min(int(practical_limit_tokens), spec.context_window_tokens)

    def edit(table) -> None:
        table["practical_limit_tokens"] = limit
        table["practical_low_tokens"] = min(spec.practical_low_tokens, limit)
        table["practical_high_tokens"] = max(spec.practical_high_tokens, limit)
        table["limit_source"] = source

    return _edit_override(spec.id, edit, path)


def _edit_override(model_id: str, edit: Callable, path: Path | None) -> Path:
    """Applies edit(table) to [models."ID"] of an overrides file (default the user's), keeping its comments.

    Safe for concurrent writers: a lock around read-modify-write, and a temp file renamed into place."""
    import tomlkit
    from filelock import FileLock

    path = Path(path) if path else user_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            load_tables(path)  # a broken file gets the same clear error as when it is read, not a tomlkit trace
        doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.is_file() else tomlkit.document()
        models = doc.setdefault("models", tomlkit.table(is_super_table=True))
        edit(models.setdefault(model_id, tomlkit.table()))
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a crash never leaves half a config
    return path


def save_accuracy_override(model_id: str, task: str, measured: dict, path: Path | None = None) -> Path:
    """Writes a model's measured accuracy on a task into a TOML overrides file, keeping its other tasks."""
    import tomlkit

    spec = get_model(model_id)
    try:
        checked = _accuracy({task: measured})[task]
    except _Bad as bad:
        wrong = "" if bad.value is _Bad.NOT_GIVEN else f", not {_shown(bad.value)}"
        raise ConfigError(f"cannot save the accuracy of {spec.id}: it {bad}{wrong}.") from None

    def edit(table) -> None:
        known = {k: dict(v) for k, v in (table.get("accuracy") or {}).items()}
        known[task] = checked
        accuracy = tomlkit.table(is_super_table=True)
        for name, values in known.items():
            inline = tomlkit.inline_table()
            inline.update(values)
            accuracy[name] = inline
        table["accuracy"] = accuracy

    return _edit_override(spec.id, edit, path)
