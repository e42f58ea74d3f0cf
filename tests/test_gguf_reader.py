"""The fast GGUF reader gives gguf's own reader's fields and tensors, part for part; a conversion
parses its file once, and the names it lends transformers are restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest

from engine.gguf_reader import FastGGUFReader, shared
from tests.test_gguf_cache import write_out


def _same_as_stock(path) -> int:
    """Assert every field and tensor of the fast reader equals the stock one's; returns the field count."""
    from gguf import GGUFReader

    stock, fast = GGUFReader(path), FastGGUFReader(path)
    assert list(fast.fields) == list(stock.fields)
    for name, want in stock.fields.items():
        got = fast.fields[name]
        assert (got.offset, got.data, got.types) == (want.offset, want.data, want.types), name
        assert len(got.parts) == len(want.parts), name
        for mine, theirs in zip(got.parts, want.parts, strict=True):
            # the dtype too: byte order included, since transformers reads values through it
            assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), name
        assert got.contents() == want.contents(), name
    assert [(t.name, t.tensor_type, t.n_bytes, t.data_offset) for t in fast.tensors] == \
        [(t.name, t.tensor_type, t.n_bytes, t.data_offset) for t in stock.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(fast.tensors, stock.tensors, strict=True))
    return len(stock.fields)


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_every_kind_of_field_equals_the_stock_readers(tmp_path, endian):
    from gguf import GGUFEndian, GGUFValueType, GGUFWriter

    path = tmp_path / "kinds.gguf"
    writer = GGUFWriter(str(path), "llama", endianess=getattr(GGUFEndian, endian))
    writer.add_array("tokenizer.ggml.tokens", ["a", "bé", "", "long" * 50, "▁x"])
    writer.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0, 3.0, 1e-30])
    writer.add_array("tokenizer.ggml.token_type", [1, 2, 3, 1, 6])
    writer.add_array("floats64", [1.5, -2.25])
    writer.add_array("flags", [True, False, True])
    writer.add_array("nested", [[1, 2], [3]])
    writer.add_array("empty", [])
    writer.add_key_value("bytes", [7, 8, 255], GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT8)
    writer.add_string("general.name", "tiny")
    writer.add_bool("flag", True)
    writer.add_uint64("big", 2**40)
    writer.add_int32("negative", -5)
    writer.add_float64("pi", 3.14)
    writer.add_tensor("w.f32", np.arange(15, dtype=np.float32).reshape(3, 5))
    writer.add_tensor("w.f16", np.ones((64,), dtype=np.float16))
    write_out(writer)
    assert _same_as_stock(path) >= 15
    fast = FastGGUFReader(path)
    assert fast.fields["tokenizer.ggml.tokens"].contents() == ["a", "bé", "", "long" * 50, "▁x"]
    assert fast.fields["tokenizer.ggml.token_type"].contents() == [1, 2, 3, 1, 6]


def test_a_conversion_parses_its_gguf_once_and_lends_nothing_after(tmp_path, monkeypatch):
    import gguf
    from gguf import GGUFReader

    from engine.gguf_cache import converted_folder
    from tests.test_gguf_cache import write_tiny_gguf

    monkeypatch.setenv("GARAGE_CACHE", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    parses = []
    stock_init = GGUFReader.__init__

    def counted(self, *args, **kwargs):
        parses.append(type(self).__name__)
        stock_init(self, *args, **kwargs)

    monkeypatch.setattr(GGUFReader, "__init__", counted)
    before = (gguf.GGUFReader, gguf.get_tensor_name_map)
    converted_folder(path)  # config, weights and (absent here) tokenizer: transformers reads the file three times
    assert parses == ["FastGGUFReader"]
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == before


def test_shared_hands_out_one_reader_and_restores_the_names(tmp_path):
    import gguf

    from tests.test_gguf_cache import write_tiny_gguf

    one, other = write_tiny_gguf(tmp_path / "a.gguf"), write_tiny_gguf(tmp_path / "b.gguf", seed=1)
    reader = FastGGUFReader(one)
    before = (gguf.GGUFReader, gguf.get_tensor_name_map)
    with pytest.raises(RuntimeError, match="inside"):
        with shared(reader):
            assert gguf.GGUFReader(str(one)) is reader
            assert isinstance(gguf.GGUFReader(other), FastGGUFReader) and gguf.GGUFReader(other) is not reader
            arch = gguf.MODEL_ARCH.LLAMA
            assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
            raise RuntimeError("inside")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == before


@pytest.mark.slow
def test_smollm2_gguf_fields_equal_the_stock_readers():
    from engine.bundled import bundled_path

    assert _same_as_stock(bundled_path("smollm2-135m")) > 20


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_a_cut_short_gguf_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys, keep):
    from gguf import GGUFWriter

    from garage_tui.cli import main

    monkeypatch.setenv("GARAGE_CACHE", str(tmp_path / "cache"))
    whole, cut = tmp_path / "whole.gguf", tmp_path / "cut.gguf"
    writer = GGUFWriter(str(whole), "llama")
    writer.add_array("tokenizer.ggml.tokens", [f"token{i}" for i in range(2000)])
    writer.add_tensor("w", np.ones((4, 4), dtype=np.float32))
    write_out(writer)
    data = whole.read_bytes()
    cut.write_bytes(data[:int(len(data) * keep)])
    assert main(["inspect", str(cut)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(cut) in err and "download it again" in err
    assert "Traceback" not in err and "unexpected error" not in err
