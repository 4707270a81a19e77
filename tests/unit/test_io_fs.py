"""The engine's parquet files carry page CRCs, and its reader checks them: a flipped bit in a data page is an error
on read, never a changed value."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.io import fs


def test_a_flipped_bit_in_a_data_page_fails_the_read_instead_of_changing_a_value(tmp_path):
    path = tmp_path / "scores.parquet"
    table = pa.table({"key": [f"k{i:05d}" for i in range(2000)], "p": pa.array(range(2000), pa.float32())})
    fs.write_parquet(str(path), table)
    assert fs.read_parquet(str(path)).equals(table)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(1)  # the float column's only page
    data = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data[start + chunk.total_compressed_size - 1] ^= 0x01  # the last byte of the chunk: inside its last page
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        fs.read_parquet(str(path))
    unchecked = pq.read_table(path)  # the same flip, read without the check: a changed value, silently
    assert unchecked["key"].equals(table["key"]) and not unchecked["p"].equals(table["p"])
