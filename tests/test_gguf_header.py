"""The fast GGUF tensor table equals gguf's own reader, on a written file and on SmolLM2's."""

from __future__ import annotations

import numpy as np
import pytest

from engine.gguf_header import GgufHeaderError, tensor_infos
from tests.test_gguf_cache import write_out


def _reader_table(path):
    from gguf import GGUFReader

    return [(t.name, t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in GGUFReader(path).tensors]


def _table(path):
    return [(i.name, i.type_name, i.n_elements, i.n_bytes) for i in tensor_infos(path)]


def test_tensor_table_of_a_written_file_equals_the_reader(tmp_path):
    from gguf import GGMLQuantizationType, GGUFWriter

    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    # every kind of metadata the skipper must step over: strings, string arrays, number arrays, scalars
    writer.add_array("tokenizer.ggml.tokens", ["a", "bé", "", "long" * 50])
    writer.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0, 3.0])
    writer.add_array("nested", [[1, 2], [3]])
    writer.add_string("general.name", "tiny")
    writer.add_bool("flag", True)
    writer.add_uint64("big", 2**40)
    writer.add_float64("pi", 3.14)
    writer.add_tensor("w.f32", np.ones((3, 5), dtype=np.float32))
    writer.add_tensor("w.f16", np.ones((64,), dtype=np.float16))
    writer.add_tensor("w.q8", np.zeros((2, 34), dtype=np.uint8), raw_dtype=GGMLQuantizationType.Q8_0)
    write_out(writer)
    assert _table(path) == _reader_table(path)
    assert [row[1] for row in _table(path)] == ["F32", "F16", "Q8_0"]


def test_not_a_gguf_is_one_clear_error(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(GgufHeaderError, match="not a GGUF"):
        tensor_infos(path)


def test_a_cut_short_gguf_is_one_clear_error(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b"] * 100)
    writer.add_tensor("w", np.ones((4, 4), dtype=np.float32))
    write_out(writer)
    data = path.read_bytes()
    for cut in (10, 400, len(data) - 200 - 64):
        (tmp_path / f"cut{cut}.gguf").write_bytes(data[:cut])
        with pytest.raises(GgufHeaderError, match="GGUF header"):
            tensor_infos(tmp_path / f"cut{cut}.gguf")


@pytest.mark.slow
def test_smollm2_tensor_table_equals_the_reader():
    from engine.bundled import bundled_path

    path = bundled_path("smollm2-135m")
    assert _table(path) == _reader_table(path)
