"""`ragkit ask` with the embedded local model, end to end: no key, no network, bundled corpora.

Each case runs the real CLI in a subprocess whose sockets refuse every internet connection
(a sitecustomize guard, itself tested below) and whose environment holds no API key. The
stuff case reads corpora/nq-wiki-sample (7 passages, under the local 2K budget); the retrieve
case reads corpora/nq-wiki (2,599 passages, far above it) through the FAISS index, which is
built on first use in corpora/nq-wiki/.ragkit/ (git-ignored) and reused after.

The 0.5B model is weak (see benchmarks/bench_local_model.py --ask for its accuracy on a random
sample): these questions are ones it answers, so a failure here means the pipeline broke (or a
prompt change made the local model worse), not bad luck.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "qwen2.5-coder-0.5b-local"

NETWORK_GUARD = '''
import socket
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
def _refuse(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError("ragkit test: network disabled (tried %r)" % (address,))
def _guarded_connect(self, address):
    _refuse(self, address)
    return _connect(self, address)
def _guarded_connect_ex(self, address):
    _refuse(self, address)
    return _connect_ex(self, address)
socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
'''


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    guard = tmp_path_factory.mktemp("netguard")
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    env = {k: v for k, v in os.environ.items()
           if not (k.endswith("_API_KEY") or k.endswith("_BASE_URL") or k.endswith("_PROXY") or k == "RAGKIT_MODEL")}
    env.update(PYTHONPATH=os.pathsep.join([str(guard), str(ROOT)]), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               RAGKIT_HOME=str(tmp_path_factory.mktemp("home")))  # the cost ledger goes to a scratch folder
    env.setdefault("RAGKIT_THREADS", "2")
    return env


def ask(env, corpus: str, question: str, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ragkit.cli", "ask", str(ROOT / corpus), question, "-m", LOCAL,
                           "--json", *extra], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_the_network_guard_really_refuses_connections(offline_env):
    code = "import socket; socket.create_connection(('127.0.0.1', 9), timeout=2)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=offline_env)
    assert proc.returncode != 0 and "network disabled" in proc.stderr


def test_stuff_case_answers_from_the_sample_corpus_with_a_citation(offline_env):
    result = ask(offline_env, "corpora/nq-wiki-sample", "who wrote the book the origin of species")
    assert result["strategy"] == "stuff"
    assert result["plan"]["documents"] == 7
    assert "darwin" in result["answer"].lower()
    cited = [s["doc_id"] for s in result["sources"]]
    assert any(doc.endswith("p8036d975e2") for doc in cited), (result["answer"], cited)  # On the Origin of Species
    assert result["usage"]["input_tokens"] <= 2048 and result["cost_usd"] == 0.0


def test_retrieve_case_answers_from_the_full_corpus_with_a_citation(offline_env):
    result = ask(offline_env, "corpora/nq-wiki", "who got the first nobel prize in physics")
    assert result["strategy"] == "retrieve"
    assert result["plan"]["corpus_tokens"] > 10 * result["plan"]["practical_limit_tokens"]
    assert "röntgen" in result["answer"].lower()
    cited = [s["doc_id"] for s in result["sources"]]
    assert any(doc.endswith("pad268f4130") for doc in cited), (result["answer"], cited)  # Nobel laureates in Physics
    assert result["usage"]["input_tokens"] <= 2048
