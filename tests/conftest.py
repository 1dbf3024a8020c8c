"""Shared test settings: offline model loading, isolated ragkit home/cache/config, the --slow switch;
shared fixtures (helpers.py holds the shared plain functions)."""
from __future__ import annotations

import os
import shutil

import pytest

# Nothing may reach a hub: fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False, help="also run the slow suites")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow suite: run with --slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory, monkeypatch):
    """Each test gets its own user config and ledger, so a developer's files never leak into results.

    The cache folder (tiktoken files, token counts, converted local model) is shared across the run:
    it holds content-addressed data only, and re-creating it per test would cost minutes.
    """
    home = tmp_path_factory.mktemp("ragkit-home")
    monkeypatch.setenv("RAGKIT_CONFIG", str(home / "models.toml"))
    monkeypatch.setenv("RAGKIT_HOME", str(home))
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TOGETHER_API_KEY",
                "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "RAGKIT_MODEL"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def sample_corpus(tmp_path):
    """A private copy of the bundled sample corpus, so its index lands in tmp."""
    from helpers import SAMPLE

    dest = tmp_path / "nq-wiki-sample"
    dest.mkdir()
    shutil.copy(SAMPLE / "passages.jsonl", dest / "passages.jsonl")
    return dest
