"""The model registry's schema: one validator for the built-in file and the user/project overrides.

Every bad value is refused (never coerced) with one sentence naming the file, the model and the
field and showing a line to write instead.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragkit import models
from ragkit.errors import ConfigError
from ragkit.models import get_model, list_models, save_limit_override

NEW_MODEL = ('[models."mine"]\nname = "Mine"\nprovider = "openai"\napi_model = "m"\ncontext_window_tokens = 32768\n'
             'practical_limit_tokens = 16000\nmax_output_tokens = 1024\ninput_usd_per_mtok = 0\n'
             'output_usd_per_mtok = 0\nencoding = "cl100k_base"\nexact_tokens = false\n')


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Writes ./ragkit.toml (the project overrides) and returns its path."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ragkit.toml"

    def write(text: str | bytes) -> Path:
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path
    return write


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        list_models()
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_non_utf8_project_file_is_one_sentence_naming_the_file(project):
    path = project('[models."gpt-4o"]\nname = "caf\xe9"\n'.encode("latin-1"))
    message = _error(path)
    assert "UTF-8" in message and "\n" not in message


def test_non_utf8_project_file_is_one_error_line_from_the_cli(project, tmp_path):
    project(b'[models."gpt-4o"]\nname = "\xff"\n')
    proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "models"], cwd=tmp_path, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error: ") and "ragkit.toml is not UTF-8" in proc.stderr


@pytest.mark.parametrize("field", ["input_usd_per_mtok", "output_usd_per_mtok"])
@pytest.mark.parametrize("value", ["nan", "inf", "+inf", "-inf", "-1"])
def test_non_finite_or_negative_prices_are_refused(project, field, value):
    path = project(f'[models."gpt-4o"]\n{field} = {value}\n')
    message = _error(path)
    assert '[models."gpt-4o"]' in message and field in message and "finite" in message
    assert f"write e.g. {field} = " in message


@pytest.mark.parametrize("line, field, expected", [
    ('aliases = "4o"', "aliases", 'must be a list of names in brackets, not the string "4o"; '
                                  'write aliases = ["4o"].'),
    ('aliases = ["4o", 4]', "aliases", 'write e.g. aliases = ["my-model", "mm"].'),
    ('exact_tokens = "no"', "exact_tokens", 'must be true or false, without quotes, not the string "no"; '
                                            "write exact_tokens = false."),
    ("exact_tokens = 1", "exact_tokens", "not 1; write exact_tokens = true."),
    ("max_output_tokens = 0", "max_output_tokens", "must be a whole number of tokens, at least 1, not 0; "
                                                   "write e.g. max_output_tokens = 4096."),
    ("context_window_tokens = 128000.0", "context_window_tokens", "write context_window_tokens = 128000."),
    ('context_window_tokens = "128000"', "context_window_tokens", 'not the string "128000"; '
                                                                  "write context_window_tokens = 128000."),
    ('input_usd_per_mtok = "2.5"', "input_usd_per_mtok", "write input_usd_per_mtok = 2.5."),
    ("practical_limit_tokens = true", "practical_limit_tokens", "whole number of tokens, at least 1, not true"),
    ("token_margin = -0.1", "token_margin", "finite number, 0 or more"),
    ('provider = "azure"', "provider", 'must be one of "openai", "anthropic", "local"'),
    ('encoding = "gpt2"', "encoding", 'must be one of "cl100k_base", "o200k_base"'),
    ('base_url = "127.0.0.1:8000"', "base_url", "http:// or https:// URL"),
    ('api_key_env = "sk-abc123"', "api_key_env", "NAME of an environment variable"),
    ('name = ""', "name", "non-empty string"),
])
def test_wrong_types_and_ranges_are_refused_not_coerced(project, line, field, expected):
    path = project(f'[models."gpt-4o"]\n{line}\n')
    message = _error(path)
    assert message.startswith(f'{path}: [models."gpt-4o"] {field} ')
    assert expected in message


def test_a_string_alias_no_longer_makes_every_letter_an_alias(project):
    project('[models."gpt-4o"]\naliases = "4o"\n')
    with pytest.raises(ConfigError, match="aliases"):
        get_model("o")  # used to resolve to gpt-4o through the aliases "4" and "o"


def test_unknown_field_suggests_the_close_one(project):
    path = project('[models."gpt-4o"]\nmax_output_token = 100\n')
    message = _error(path)
    assert 'unknown field "max_output_token", did you mean max_output_tokens?' in message


def test_unknown_top_level_table_is_refused_with_a_suggestion(project):
    path = project('[model."gpt-4o"]\nmax_output_tokens = 100\n')  # silently ignored before
    assert "did you mean models?" in _error(path)


@pytest.mark.parametrize("line, field", [
    ("practical_limit_tokens = 200000", "practical_limit_tokens"),
    ("max_output_tokens = 200000", "max_output_tokens"),
    ("practical_high_tokens = 200000", "practical_high_tokens"),
])
def test_sizes_above_the_context_window_are_refused(project, line, field):
    path = project(f'[models."gpt-4o"]\n{line}\n')
    message = _error(path)
    assert field in message and "context_window_tokens (128000" in message and "at most 128000" in message


def test_a_smaller_window_in_one_file_is_checked_against_limits_from_another(project):
    path = project('[models."gpt-4o"]\ncontext_window_tokens = 8000\n')
    message = _error(path)
    # The limit (40000) comes from the built-in file; the window that it now exceeds from the project file.
    assert str(models.BUILTIN_REGISTRY) in message and f"set in {path}" in message


@pytest.mark.parametrize("lines", ["practical_low_tokens = 20000\npractical_high_tokens = 18000",
                                   "practical_low_tokens = 20000"])
def test_low_end_above_high_end_is_refused(project, lines):
    # The second case: a new model whose high end is not given, so it is its limit (16000).
    path = project(NEW_MODEL + lines + "\n")
    assert '[models."mine"] practical_low_tokens (20000) is above practical_high_tokens' in _error(path)


def test_new_model_missing_fields_names_them_and_shows_a_line(project):
    path = project('[models."new"]\nname = "x"\n')
    message = _error(path)
    assert "lacks provider, api_model" in message and 'add e.g. provider = "openai"' in message


def test_alias_taken_by_another_model_is_refused(project):
    path = project(NEW_MODEL + 'aliases = ["4o"]\n')
    message = _error(path)
    assert '[models."mine"] aliases: "4o" already names the model gpt-4o' in message


def test_new_model_whose_id_is_another_models_alias_is_refused(project):
    path = project(NEW_MODEL.replace('"mine"', '"flash"'))
    assert '[models."flash"] id: "flash" already names the model gemini-2.0-flash' in _error(path)


def test_overriding_a_builtin_alias_list_to_clash_blames_the_override(project):
    path = project('[models."gpt-4o"]\naliases = ["haiku"]\n')
    assert '[models."gpt-4o"] aliases: "haiku" already names the model claude-3.5-haiku' in _error(path)


def test_the_encodings_a_model_may_name_are_the_ones_ragkit_ships():
    from ragkit import tokens

    assert set(models.ENCODINGS) == set(tokens.ENCODINGS)


def test_every_model_field_has_a_schema_entry():
    from dataclasses import fields

    assert set(models._SCHEMA) == {f.name for f in fields(models.ModelSpec)} - {"id"}


def test_valid_overrides_still_load(project):
    project(NEW_MODEL + 'aliases = ["mm"]\nbase_url = "http://127.0.0.1:8000/v1"\napi_key_env = ""\n'
            'tokens_per_s = 70\n[models."gpt-4o"]\ninput_usd_per_mtok = 2\n')
    mine = get_model("mm")
    assert mine.id == "mine" and mine.aliases == ("mm",) and mine.api_key_env is None
    assert mine.practical_low_tokens == mine.practical_high_tokens == 16000 and mine.tokens_per_s == 70.0
    assert get_model("gpt-4o").input_usd_per_mtok == 2.0


def test_the_builtin_registry_goes_through_the_same_validator(tmp_path, monkeypatch):
    bad = tmp_path / "models.toml"
    bad.write_text(models.BUILTIN_REGISTRY.read_text(encoding="utf-8").replace(
        'aliases = ["gpt4o", "gpt-4o-2024-11-20", "4o"]', 'aliases = "4o"'))
    monkeypatch.setattr(models, "BUILTIN_REGISTRY", bad)
    models._cache.clear()
    try:
        with pytest.raises(ConfigError, match=f'{bad}: \\[models."gpt-4o"\\] aliases must be a list'):
            list_models()
    finally:
        models._cache.clear()


def test_the_user_file_is_validated_like_the_project_file():
    user = Path(os.environ["RAGKIT_CONFIG"])
    user.write_text('[models."claude-3.5-haiku"]\nexact_tokens = 1\n')
    with pytest.raises(ConfigError, match=f'{user}: \\[models."claude-3.5-haiku"\\] exact_tokens must be true or false'):
        list_models()


def test_save_limit_override_refuses_a_broken_target_file_clearly(tmp_path):
    target = tmp_path / "overrides.toml"
    target.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="overrides.toml is not UTF-8"):
        save_limit_override("gpt-4o", 30000, "measured", target)


def _save_many(path: str, model: str) -> None:
    for limit in range(1000, 1040):
        save_limit_override(model, limit, "measured", Path(path))


def test_concurrent_limit_saves_lose_no_model_and_leave_valid_toml(tmp_path):
    import multiprocessing

    target = tmp_path / "overrides.toml"
    ids = ["gpt-4o", "gpt-4o-mini", "claude-3.5-haiku", "llama-3.1-70b"]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_save_many, args=(str(target), m)) for m in ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(ids)
    tables = models.load_tables(target)
    assert set(tables) == set(ids) and all(t["practical_limit_tokens"] == 1039 for t in tables.values())
