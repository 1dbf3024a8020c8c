"""The model registry: context window, practical limit, prices, latency and tokenizer of each model.

Built-in figures live in ragkit/data/models.toml. Users add or override models with the same
[models.ID] tables in a user file (~/.config/ragkit/models.toml, or $RAGKIT_CONFIG) and a
project file (./ragkit.toml); later files win field by field.
"""
from __future__ import annotations

import difflib
import os
import threading
import tomllib
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from ragkit.errors import ConfigError, UnknownModelError

PROVIDERS = ("openai", "anthropic", "local")


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
    good_for: str
    encoding: str
    exact_tokens: bool
    token_margin: float

    @property
    def limit_is_measured(self) -> bool:
        return self.limit_source.startswith("measured")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d


_FIELDS = {f.name: f for f in fields(ModelSpec)}
_OPTIONAL = {"aliases": (), "base_url": None, "api_key_env": None, "good_for": "",
             "token_margin": 0.0, "ttft_s": 0.0, "tokens_per_s": 0.0}
_lock = threading.Lock()
_cache: dict[tuple, dict[str, ModelSpec]] = {}


def user_config_path() -> Path:
    if os.environ.get("RAGKIT_CONFIG"):
        return Path(os.environ["RAGKIT_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ragkit" / "models.toml"


def project_config_path() -> Path:
    return Path.cwd() / "ragkit.toml"


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}). Fix the file or move it aside.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}.") from None


def _builtin_tables() -> dict:
    text = resources.files("ragkit").joinpath("data/models.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)["models"]


def _override_files() -> list[Path]:
    return [p for p in (user_config_path(), project_config_path()) if p.is_file()]


def _merge(tables: dict[str, dict], path: Path) -> None:
    data = _read_toml(path)
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{path}: 'models' must be a table of [models.ID] tables.")
    for model_id, table in models.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [models.{model_id}] must be a table.")
        unknown = set(table) - set(_FIELDS)
        if unknown:
            raise ConfigError(f"{path}: [models.{model_id}] has unknown field(s) {', '.join(sorted(unknown))}; "
                              f"known fields: {', '.join(_FIELDS)}.")
        tables.setdefault(model_id, {}).update(table)
        tables[model_id]["_from"] = str(path)


def _build(model_id: str, table: dict) -> ModelSpec:
    origin = table.get("_from", "the built-in registry")
    values = {"id": model_id}
    for name, f in _FIELDS.items():
        if name == "id":
            continue
        if name in table:
            values[name] = table[name]
        elif name == "practical_low_tokens" and "practical_limit_tokens" in table:
            values[name] = table["practical_limit_tokens"]
        elif name == "practical_high_tokens" and "practical_limit_tokens" in table:
            values[name] = table["practical_limit_tokens"]
        elif name == "limit_source":
            values[name] = "default: set by the user without a source"
        elif name in _OPTIONAL:
            values[name] = _OPTIONAL[name]
        else:
            raise ConfigError(f"model '{model_id}' (from {origin}) lacks '{name}'. A new model needs: "
                              + ", ".join(n for n in _FIELDS if n not in _OPTIONAL and n != "id") + ".")
    try:
        values["aliases"] = tuple(str(a) for a in values["aliases"])
        for name in ("context_window_tokens", "practical_limit_tokens", "practical_low_tokens",
                     "practical_high_tokens", "max_output_tokens"):
            values[name] = int(values[name])
        for name in ("input_usd_per_mtok", "output_usd_per_mtok", "ttft_s", "tokens_per_s", "token_margin"):
            values[name] = float(values[name])
        values["exact_tokens"] = bool(values["exact_tokens"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model '{model_id}' (from {origin}): {exc}.") from None
    spec = ModelSpec(**values)
    if spec.provider not in PROVIDERS:
        raise ConfigError(f"model '{model_id}' (from {origin}): provider must be one of {', '.join(PROVIDERS)}.")
    if not 0 < spec.practical_limit_tokens <= spec.context_window_tokens:
        raise ConfigError(f"model '{model_id}' (from {origin}): practical_limit_tokens must be between 1 and "
                          f"the context window ({spec.context_window_tokens}).")
    if spec.token_margin < 0 or spec.input_usd_per_mtok < 0 or spec.output_usd_per_mtok < 0:
        raise ConfigError(f"model '{model_id}' (from {origin}): margins and prices cannot be negative.")
    return spec


def _registry() -> dict[str, ModelSpec]:
    files = _override_files()
    key = tuple((str(p), p.stat().st_mtime_ns) for p in files)
    with _lock:
        if key not in _cache:
            tables = {k: dict(v) for k, v in _builtin_tables().items()}
            for path in files:
                _merge(tables, path)
            _cache.clear()
            _cache[key] = {mid: _build(mid, t) for mid, t in tables.items()}
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
    import tomlkit

    spec = get_model(model_id)
    path = Path(path) if path else user_config_path()
    doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.is_file() else tomlkit.document()
    models = doc.setdefault("models", tomlkit.table(is_super_table=True))
    table = models.setdefault(spec.id, tomlkit.table())
    limit = min(int(practical_limit_tokens), spec.context_window_tokens)
    table["practical_limit_tokens"] = limit
    table["practical_low_tokens"] = min(spec.practical_low_tokens, limit)
    table["practical_high_tokens"] = max(spec.practical_high_tokens, limit)
    table["limit_source"] = source
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash never leaves half a config
    return path
