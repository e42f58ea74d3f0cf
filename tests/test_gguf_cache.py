"""The GGUF conversion cache on a tiny GGUF written here: tensor-by-tensor dequantisation equals
transformers' own GGUF load, cancel stops it and leaves nothing, damaged entries are rebuilt,
stale staging folders of dead processes are removed, two processes converting one GGUF at once
convert it once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import gguf_cache
from engine.errors import Cancelled
from engine.gguf_cache import MARKER, cached_folder_for, check_entry, converted_folder, remove_stale_staging

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 64, 2, 4, 2, 96, 160


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama GGUF with random weights, some stored as Q8_0 (quantised) blocks."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(VOCAB)

    def add(name: str, shape: tuple[int, ...], quantise: bool = False) -> None:
        data = rng.standard_normal(shape).astype(np.float32) * 0.1
        if quantise:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)

    add("token_embd.weight", (VOCAB, HIDDEN), quantise=True)
    for i in range(LAYERS):
        d = HIDDEN // HEADS
        add(f"blk.{i}.attn_norm.weight", (HIDDEN,))
        add(f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN), quantise=True)
        add(f"blk.{i}.attn_k.weight", (KV_HEADS * d, HIDDEN), quantise=True)
        add(f"blk.{i}.attn_v.weight", (KV_HEADS * d, HIDDEN))
        add(f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN), quantise=True)
        add(f"blk.{i}.ffn_norm.weight", (HIDDEN,))
        add(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), quantise=True)
        add(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN))
        add(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), quantise=True)
    add("output_norm.weight", (HIDDEN,))
    write_out(writer)
    return path


def write_out(writer) -> None:
    """Write a filled ``gguf.GGUFWriter``'s header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture()
def tiny_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("GARAGE_CACHE", str(tmp_path / "cache"))
    return write_tiny_gguf(tmp_path / "tiny-llama.gguf")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    # Copies: the loaded tensors may map the file, which the damage tests rewrite in place.
    return {name: tensor.clone() for name, tensor in load_file(str(folder / "model.safetensors")).items()}


def test_conversion_equals_transformers_gguf_load_bit_for_bit(tiny_gguf, monkeypatch):
    import transformers

    # Small row blocks force the embedding through the block-by-block path.
    monkeypatch.setattr(gguf_cache, "ROW_BLOCK_BYTES", 4 * HIDDEN * 7)
    folder = converted_folder(tiny_gguf)
    ours = _weights(folder)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32).state_dict()
    assert set(ours) == set(reference) - {"lm_head.weight"}  # tied: the embedding is stored once
    assert all(torch.equal(ours[name], reference[name]) for name in ours)
    assert ours["model.embed_tokens.weight"].abs().sum() > 0
    manifest = json.loads((folder / MARKER).read_text())
    assert set(manifest["files"]) >= {"config.json", "model.safetensors"}
    assert check_entry(folder, deep=True).ok


def test_bfloat16_target_is_converted_per_tensor(tiny_gguf):
    folder = converted_folder(tiny_gguf, dtype="bfloat16")
    assert folder != cached_folder_for(tiny_gguf) and folder.name.startswith("tiny-llama-bfloat16-")
    bf16 = _weights(folder)
    fp32 = _weights(converted_folder(tiny_gguf))
    assert all(tensor.dtype == torch.bfloat16 for tensor in bf16.values())
    assert all(torch.equal(bf16[name], fp32[name].to(torch.bfloat16)) for name in fp32)


def test_a_second_dtype_reuses_the_converted_tokenizer(tiny_gguf, monkeypatch):
    import transformers

    fp32 = converted_folder(tiny_gguf)
    (fp32 / "tokenizer.json").write_text('{"stand-in": "a converted tokenizer"}')
    gguf_cache._write_manifest(fp32, tiny_gguf, "float32", ["config.json", "model.safetensors", "tokenizer.json"])

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("the tokenizer was converted again")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_conversion)
    half = converted_folder(tiny_gguf, dtype="float16")
    assert (half / "tokenizer.json").read_text() == (fp32 / "tokenizer.json").read_text()
    assert "tokenizer.json" in json.loads((half / MARKER).read_text())["files"]


def test_cancel_stops_the_conversion_at_the_next_tensor_and_caches_nothing(tiny_gguf):
    cancel = threading.Event()
    seen: list[str] = []

    def progress(stage: str, _fraction: float | None) -> None:
        if stage.startswith("dequantising ") and "(once" not in stage:
            seen.append(stage)
            if len(seen) == 3:
                cancel.set()

    with pytest.raises(Cancelled, match="nothing was cached"):
        converted_folder(tiny_gguf, progress=progress, cancel=cancel)
    assert len(seen) == 3  # the fourth tensor was never dequantised
    parent = cached_folder_for(tiny_gguf).parent
    # no entry, no staging folder; the lock file stays (unlinking it would race a process waiting on it)
    assert [p.name for p in parent.iterdir()] == [f".{cached_folder_for(tiny_gguf).name}.lock"]


def test_open_model_cancelled_mid_conversion_leaves_no_cache_entry(tiny_gguf):
    from engine.loading import open_model

    cancel = threading.Event()

    def progress(stage: str, _fraction: float | None) -> None:
        if "layers.0." in stage:
            cancel.set()

    with pytest.raises(Cancelled):
        open_model(str(tiny_gguf), progress=progress, cancel=cancel)
    assert not cached_folder_for(tiny_gguf).exists()
    loaded = open_model(str(tiny_gguf))  # a later open converts from scratch and works
    assert loaded.anatomy.n_layers == LAYERS and loaded.weights_path == cached_folder_for(tiny_gguf)


def _damage_truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _damage_config(folder: Path) -> None:
    path = folder / "config.json"
    text = path.read_text()
    path.write_text(text.replace('"hidden_act": "silu"', '"hidden_act": "gelu"'))
    assert path.read_text() != text


def _damage_weights_in_place(folder: Path) -> None:
    path = folder / "model.safetensors"
    payload = bytearray(path.read_bytes())
    payload[-8:] = b"\xff" * 8  # same size, different numbers
    path.write_bytes(bytes(payload))


def _damage_manifest(folder: Path) -> None:
    (folder / MARKER).unlink()


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_config, _damage_weights_in_place, _damage_manifest])
def test_damaged_entry_is_rebuilt_not_loaded(tiny_gguf, damage, monkeypatch):
    monkeypatch.setattr(gguf_cache, "FULL_HASH_LIMIT", 1024)  # treat the weights as a large file
    folder = converted_folder(tiny_gguf)
    good = _weights(folder)
    before = (folder / "model.safetensors").stat().st_mtime_ns
    damage(folder)
    assert not check_entry(folder).ok
    assert converted_folder(tiny_gguf) == folder
    assert check_entry(folder, deep=True).ok
    rebuilt = _weights(folder)
    assert all(torch.equal(rebuilt[name], good[name]) for name in good)
    config = json.loads((folder / "config.json").read_text())
    assert (config["hidden_act"], config["architectures"]) == ("silu", ["LlamaForCausalLM"])
    assert (folder / "model.safetensors").stat().st_mtime_ns != before or damage is _damage_config


def test_deep_check_catches_an_edit_that_kept_size_and_mtime(tiny_gguf, monkeypatch):
    monkeypatch.setattr(gguf_cache, "FULL_HASH_LIMIT", 1024)
    folder = converted_folder(tiny_gguf)
    path = folder / "model.safetensors"
    stat = path.stat()
    _damage_weights_in_place(folder)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check_entry(folder).ok  # the every-open check trusts an untouched mtime on large files
    problem = check_entry(folder, deep=True)
    assert not problem.ok and "sha256" in problem.problem


def test_stale_staging_of_a_dead_process_is_removed(tiny_gguf):
    folder = cached_folder_for(tiny_gguf)
    folder.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = folder.parent / f".{folder.name}.staging-{dead}-abc"
    live = folder.parent / f".{folder.name}.staging-{os.getpid()}-def"
    for path in (stale, live):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    assert remove_stale_staging(folder.parent) == [stale]
    assert live.exists()
    live.rename(folder.parent / "unrelated")
    converted_folder(tiny_gguf)
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, "unrelated", f".{folder.name}.lock"])


def test_second_open_comes_from_the_checked_cache_with_the_first_opens_logits(tiny_gguf, monkeypatch):
    from engine import loading
    from engine.loading import open_model

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    first = open_model(str(tiny_gguf))
    with torch.no_grad():
        first_logits = first.model(input_ids=ids).logits

    def refuse(*_args, **_kwargs):
        raise AssertionError("a second open must neither convert nor re-parse the cached tokenizer file")

    monkeypatch.setattr(gguf_cache, "convert_gguf", refuse)
    monkeypatch.setattr(loading, "check_tokenizer_file", refuse)
    second = open_model(str(tiny_gguf))
    with torch.no_grad():
        second_logits = second.model(input_ids=ids).logits
    assert second.weights_path == first.weights_path == cached_folder_for(tiny_gguf)
    assert torch.equal(second_logits, first_logits) and first_logits.abs().max() > 0


def test_a_damaged_cached_tokenizer_is_rebuilt_not_loaded(tiny_gguf):
    # The cached tokenizer.json skips the foreign-folder parse on open; the manifest is its check.
    folder = converted_folder(tiny_gguf)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    gguf_cache._write_manifest(folder, tiny_gguf, "float32", ["config.json", "model.safetensors", "tokenizer.json"])
    assert check_entry(folder).ok
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPX"}}')  # same size
    problem = check_entry(folder)
    assert not problem.ok and "tokenizer.json" in (problem.problem or "")
    converted_folder(tiny_gguf)
    assert check_entry(folder, deep=True).ok and not (folder / "tokenizer.json").exists()


_CONVERT_ONCE = """
import sys, time
from pathlib import Path
from engine import gguf_cache

real = gguf_cache.convert_gguf
def slow_convert(*args, **kwargs):
    print("converted", flush=True)
    time.sleep(1.0)  # long enough for the other process to arrive while this one holds the lock
    return real(*args, **kwargs)
gguf_cache.convert_gguf = slow_convert
folder = gguf_cache.converted_folder(Path(sys.argv[1]))
print("folder", folder, gguf_cache.check_entry(folder).ok, flush=True)
"""


@pytest.mark.slow
def test_two_processes_opening_one_gguf_at_once_convert_it_once(tiny_gguf):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", _CONVERT_ONCE, str(tiny_gguf)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _out, err in outputs]
    lines = [line for out, _err in outputs for line in out.splitlines()]
    assert lines.count("converted") == 1
    folders = [line for line in lines if line.startswith("folder")]
    assert folders == [f"folder {cached_folder_for(tiny_gguf)} True"] * 2


def test_a_process_waiting_for_anothers_conversion_can_be_cancelled(tiny_gguf):
    folder = cached_folder_for(tiny_gguf)
    cancel = threading.Event()
    stages: list[str] = []

    def progress(stage: str, _fraction: float | None) -> None:
        stages.append(stage)
        cancel.set()  # Esc while queued behind the other conversion

    with gguf_cache.conversion_lock(folder, None, None):  # "another process" holds the entry's lock
        with pytest.raises(Cancelled):
            converted_folder(tiny_gguf, progress=progress, cancel=cancel)
    assert stages == ["waiting for another process converting this GGUF"]
    assert not folder.exists()
    assert check_entry(converted_folder(tiny_gguf)).ok  # the lock is free again
