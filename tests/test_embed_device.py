"""Where the embedders run: the device decision (`ragkit.embed.embedding_device`) from the GPUs a process
was given and what its runtime reports, and Ray's embedding actors given a GPU. This machine has no GPU
and a CPU-only torch wheel, so the CUDA path itself never runs here: a Ray instance with a *declared*
GPU resource gives its actor GPU id 0 without hardware, and the tests hold the fallback to the local
path's vectors and to one warning line that says why.

The Ray test starts its own instance (one at a time on a 2-core machine: pytest tears down
tests/test_ray_engine.py's module-scoped instance before this module starts)."""
from __future__ import annotations

import numpy as np
import pytest

from ragkit import embed
from ragkit.errors import ConfigError
from test_ray_engine import _assert_same_index, _index, _make_corpus

ONNX_FALLBACK = "onnxruntime has no CUDAExecutionProvider: pip install onnxruntime-gpu"
TEXTS = ["Rotate the API key every ninety days.", "who wrote the book the origin of species"]


def test_a_process_given_no_gpu_embeds_on_the_cpu_without_a_note():
    for backend in ("torch", "onnx", "onnx-int8", "openvino"):
        assert embed.embedding_device([], backend) == ("cpu", None)


def test_gpu_unusable_names_why_from_what_the_runtime_reports():
    assert embed.gpu_unusable("torch", torch_cuda="12.1", cuda_available=True) is None
    assert embed.gpu_unusable("torch", torch_cuda=None) == "the torch wheel has no CUDA: install a CUDA build of torch"
    assert embed.gpu_unusable("torch", torch_cuda="12.1", cuda_available=False) == (
        "torch (CUDA 12.1) sees no usable GPU: check the NVIDIA driver and CUDA_VISIBLE_DEVICES")
    assert embed.gpu_unusable("onnx", ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    assert embed.gpu_unusable("onnx", ort_providers=["AzureExecutionProvider", "CPUExecutionProvider"]) == ONNX_FALLBACK
    assert embed.gpu_unusable("openvino") == "ragkit runs the openvino backend on the CPU only: use the torch or an onnx backend"


def test_a_gpu_given_to_this_machines_runtimes_falls_back_to_the_cpu_naming_why():
    import onnxruntime
    import torch

    if torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine can run CUDA: the fallback cannot be observed")
    expected_torch = embed.gpu_unusable("torch", torch_cuda=torch.version.cuda)
    assert embed.embedding_device([0], "torch") == ("cpu", expected_torch)
    assert embed.embedding_device([0], "onnx-int8") == ("cpu", ONNX_FALLBACK)
    assert embed.embedding_device([0], "openvino")[0] == "cpu"


def test_embedders_are_cached_per_device_and_an_unknown_device_is_refused():
    with pytest.raises(ConfigError, match="unknown embedding device 'gpu'; use one of cpu, cuda"):
        embed.get_embedder(None, "onnx-int8", "gpu")
    cpu = embed.get_embedder(None, "onnx-int8")
    assert embed.get_embedder(None, "onnx-int8", "cpu") is cpu and cpu.device == "cpu"
    # Asked for CUDA where onnxruntime cannot run it, the session runs on the CPU and says so (the actor's
    # check for ORT's silent fallback when onnxruntime-gpu lacks its CUDA libraries).
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has CUDA: the fallback cannot be observed")
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):   # ORT's own, in place of running it
        cuda = embed.get_embedder(None, "onnx-int8", "cuda")
    assert cuda is not cpu and cuda.device == "cpu"
    np.testing.assert_allclose(cuda.encode(TEXTS), cpu.encode(TEXTS), atol=1e-5)


@pytest.fixture(scope="module")
def ray_with_a_declared_gpu():
    ray = pytest.importorskip("ray")
    # num_gpus declares the resource: Ray schedules the GPU actor and gives it GPU id 0, no hardware needed.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_gpu_actor_that_cannot_use_its_gpu_gives_the_local_vectors_and_one_warning(
        ray_with_a_declared_gpu, tmp_path, capsys):
    import onnxruntime

    from ragkit.ray_engine import RayEngine

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has CUDA: the actor would run on the GPU")
    corpus = _make_corpus(tmp_path / "docs")
    local = _index(corpus, tmp_path / "local")
    capsys.readouterr()
    report = _index(corpus, tmp_path / "ray", RayEngine(batch_size=8))   # several batches, one actor
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ragkit: warning:")]
    assert warnings == [f"ragkit: warning: the embedding actors were given GPUs but embed on the CPU ({ONNX_FALLBACK})"]
    _assert_same_index(local, tmp_path / "local", report, tmp_path / "ray")
