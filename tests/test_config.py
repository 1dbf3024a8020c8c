"""ragkit.config: the one home of folders, config files, threads, the offline switches, the default
model and the bundled data; and the data the default evals read ships inside the package."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import ragkit
from ragkit import config
from ragkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(ragkit.__file__).resolve().parent
SAMPLE = ROOT / "corpora" / "nq-wiki-sample"
# The package data the default `ragkit eval needle|qa|kv|suite` reads, and the licences that go with it.
EVAL_DATA = ["data/models.toml", "data/evals/nq-wiki/passages.jsonl", "data/evals/questions/nq-wiki.jsonl",
             "data/evals/kv-retrieval/kv-retrieval-75_keys-first50.jsonl.gz", "data/evals/kv-retrieval/LICENSE",
             "data/evals/README.md", "data/suites/lost-in-the-middle.toml", "data/suites/local-smoke.toml",
             "data/suites/litm-paper-qa.toml"]


def _cli(*args, env=None):
    from ragkit.cli import main

    return CliRunner().invoke(main, list(args), env=env)


# --------------------------------------------------------------------------- the default model

def test_every_command_defaults_to_the_same_model():
    plan = json.loads(_cli("plan", str(SAMPLE), "--json").output)
    count = json.loads(_cli("count", str(SAMPLE), "--json").output)
    cost = json.loads(_cli("cost", "--tokens-per-day", "1000", "--json").output)
    ask = json.loads(_cli("ask", str(SAMPLE), "who wrote the origin of species", "--dry-run", "--json").output)
    assert plan["model"] == count["model"] == cost["model"] == config.DEFAULT_MODEL  # plan/count/cost said gpt-4o
    assert ask["model"] == config.DEFAULT_MODEL


@pytest.mark.parametrize("args", [
    ["plan", str(SAMPLE)], ["count", str(SAMPLE)], ["cost", "--tokens-per-day", "10"],
    ["ask", str(SAMPLE), "q", "--dry-run"], ["eval", "needle", "-l", "500"], ["eval", "qa"], ["eval", "kv"],
    ["eval", "suite", "local-smoke"],
])
def test_ragkit_model_sets_the_model_of_every_command(args):
    result = _cli(*args, env={"RAGKIT_MODEL": "no-such-model"})
    assert result.exit_code == 1 and "unknown model 'no-such-model'" in result.output


def test_ragkit_model_sets_the_library_default(monkeypatch):
    from ragkit.answer import Session

    assert Session(SAMPLE, ledger=False).model == config.DEFAULT_MODEL
    monkeypatch.setenv("RAGKIT_MODEL", "local")
    assert Session(SAMPLE, ledger=False).model == "local"
    assert Session(SAMPLE, model="gpt-4o", ledger=False).model == "gpt-4o"


# --------------------------------------------------------------------------- folders, threads, offline

def test_folders_follow_ragkit_variables_then_xdg_then_home(tmp_path, monkeypatch):
    for var in ("RAGKIT_CACHE_DIR", "RAGKIT_HOME", "RAGKIT_CONFIG", "RAGKIT_EVAL_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    assert config.cache_dir() == home / ".cache" / "ragkit"
    assert config.data_home() == home / ".local" / "share" / "ragkit"
    assert config.user_config_path() == home / ".config" / "ragkit" / "models.toml"
    assert config.eval_cache_path() == home / ".cache" / "ragkit" / "eval-cache.sqlite"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xc"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xf"))
    assert config.cache_dir() == tmp_path / "xc" / "ragkit"
    assert config.user_config_path() == tmp_path / "xf" / "ragkit" / "models.toml"
    monkeypatch.setenv("RAGKIT_CACHE_DIR", "~/c")
    monkeypatch.setenv("RAGKIT_EVAL_CACHE", str(tmp_path / "e.sqlite"))
    assert config.cache_dir() == home / "c" and config.eval_cache_path() == tmp_path / "e.sqlite"
    monkeypatch.chdir(tmp_path)
    assert config.project_config_path() == tmp_path / "ragkit.toml"


def test_every_module_takes_its_folders_from_config(tmp_path, monkeypatch):
    from ragkit import ledger, local_model, models, tokens
    from ragkit.evals import cache

    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("RAGKIT_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("RAGKIT_CONFIG", str(tmp_path / "u.toml"))
    assert tokens.cache_dir() == tmp_path / "c"
    assert local_model.cache_dir().parent == tmp_path / "c" / "models"
    assert cache.default_cache_path() == tmp_path / "c" / "eval-cache.sqlite"
    assert ledger.ledger_path() == tmp_path / "h" / "ledger.sqlite"
    assert models.user_config_path() == tmp_path / "u.toml"


@pytest.mark.parametrize("var, read", [("RAGKIT_EMBED_THREADS", "embed"), ("RAGKIT_THREADS", "local")])
def test_thread_counts_are_whole_numbers_of_at_least_one(monkeypatch, var, read):
    from ragkit import embed, local_model

    fn = {"embed": embed.default_threads, "local": local_model.thread_count}[read]
    monkeypatch.setenv(var, "3")
    assert fn() == 3
    for bad, message in (("two", "whole number"), ("0", "at least 1"), ("-2", "at least 1")):
        monkeypatch.setenv(var, bad)  # RAGKIT_EMBED_THREADS=0 or -2 used to mean 1 thread, silently
        with pytest.raises(ConfigError, match=f"{var} must be .*{message}"):
            fn()
    monkeypatch.delenv(var)
    assert fn() >= 1


def test_offline_switches_are_set_once_and_keep_the_users_values(monkeypatch):
    from ragkit import embed, local_model

    assert embed.set_offline_env is config.set_offline_env is local_model.set_offline_env
    for name in config.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    config.set_offline_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"


# --------------------------------------------------------------------------- bundled data

def test_no_module_finds_data_relative_to_the_source_tree():
    # A path built from __file__'s parents points into a checkout; from an installed wheel it points at
    # site-packages' parent, where no corpora/ or evals/ exist. Bundled data goes through config.bundled.
    pattern = re.compile(r"parents\[|\.parent\.parent|REPO_ROOT|Path\(__file__\)")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
                 for p in sorted(PACKAGE.rglob("*.py"))
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_default_eval_data_and_suites_are_found_inside_the_package(tmp_path, monkeypatch):
    from ragkit.evals import tasks
    from ragkit.evals.suites import find_suite

    monkeypatch.chdir(tmp_path)  # not the repository
    for path in (tasks.BUNDLED_CORPUS, tasks.BUNDLED_QUESTIONS, tasks.BUNDLED_KV):
        assert path.exists() and path.resolve().is_relative_to(PACKAGE)
    assert find_suite("local-smoke") == config.bundled("suites", "local-smoke.toml")
    assert len(tasks.load_passages()) == 2599


def test_package_copies_of_the_corpora_match_the_repository():
    pairs = {"evals/nq-wiki/passages.jsonl": "nq-wiki/passages.jsonl",
             "evals/questions/nq-wiki.jsonl": "questions/nq-wiki.jsonl",
             "evals/kv-retrieval/kv-retrieval-75_keys-first50.jsonl.gz":
                 "kv-retrieval/kv-retrieval-75_keys-first50.jsonl.gz",
             "evals/kv-retrieval/LICENSE": "kv-retrieval/LICENSE"}
    for packaged, repo in pairs.items():
        assert config.bundled(packaged).read_bytes() == (ROOT / "corpora" / repo).read_bytes(), packaged


@pytest.mark.slow
def test_wheel_ships_the_default_eval_data_and_runs_eval_outside_the_repo(tmp_path):
    from llm_server import LLMServer

    src = tmp_path / "src"  # a copy, so setuptools' build/ folder does not land in the checkout
    shutil.copytree(ROOT / "ragkit", src / "ragkit", ignore=shutil.ignore_patterns("__pycache__", ".ragkit"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("ragkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [f for f in EVAL_DATA if f"ragkit/{f}" not in names] == []
    assert not any(n.startswith(("corpora/", "evals/", "tests/")) for n in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))  # the unpacked wheel only, not the checkout
    where = subprocess.run([sys.executable, "-c", "import ragkit; print(ragkit.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(site)
    with LLMServer(responder=lambda req: "blue") as srv:  # a real HTTP endpoint; no key needed on loopback
        proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "eval", "needle", "--base-url",
                               srv.openai_base_url, "-l", "500", "--depths", "0", "-n", "1", "--no-progress",
                               "--cache", str(tmp_path / "c.sqlite"), "--json"],
                              cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert len(srv.requests) == 1 and "<document>" in srv.requests[0].prompt
    assert (work / "ragkit-evals" / f"needle-{config.DEFAULT_MODEL}" / "results.jsonl").is_file()
