import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrank.config import Columns
from rayrank.io.tables import InputSchemaError, plan_shards, rank_queries, read_footers, read_shard, split_valid

FS = fsspec.filesystem("file")


def _write(path, n, row_group_size):
    table = pa.table({"query_id": [f"q{i % 3}" for i in range(n)], "query": ["what"] * n,
                      "doc_id": [f"d{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def test_shards_cover_every_row_once_and_split_big_row_groups(tmp_path):
    files = [_write(tmp_path / "one-group.parquet", 250, 1000), _write(tmp_path / "small-groups.parquet", 95, 10)]
    groups, layouts = read_footers(FS, files, Columns())
    assert layouts == {files[0]: "long", files[1]: "long"}
    shards = plan_shards(FS, groups, target_rows=40)
    assert [s.rows for s in shards if s.path == files[0]] == [40] * 6 + [10]
    assert all(s.rows >= 40 or s is shards[-1] for s in shards if s.path == files[1])
    seen = []
    for shard in shards:
        table, _ = read_shard(FS, shard, "long", Columns())
        assert table.num_rows == shard.rows
        seen += [(shard.path, r) for r in table["_row"].to_pylist()]
    assert sorted(seen) == sorted([(files[0], r) for r in range(250)] + [(files[1], r) for r in range(95)])
    assert [s.shard_id for s in plan_shards(FS, groups, 40)] == [s.shard_id for s in shards]  # deterministic


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"query_id": ["q"], "query": ["a"], "doc_id": ["d"]}), path)
    with pytest.raises(InputSchemaError, match=r"x.parquet: missing required column\(s\) text"):
        read_footers(FS, [str(path)], Columns())


def test_integer_ids_become_strings_and_non_string_text_is_rejected(tmp_path):
    table = pa.table({"query_id": [1, 2], "query": ["a", "b"], "doc_id": [10, 11], "text": [5, 6],
                      "_source": ["f", "f"], "_row": [0, 1], "_seq": [0, 1]})
    valid, errors = split_valid(table)
    assert valid.num_rows == 0 and errors["reason"].to_pylist() == ["text is int64, not a string"] * 2
    assert errors["query_id"].to_pylist() == ["1", "2"]


def test_rank_queries_ties_and_duplicates():
    scored = pa.table({"query_id": ["q", "q", "q", "q"], "doc_id": ["b", "a", "c", "a"],
                       "score": pa.array([1.0, 1.0, 2.0, 9.0], pa.float32()), "_source": ["f"] * 4,
                       "_row": [0, 1, 2, 3], "_seq": [0, 1, 2, 3], "extra": [1, 2, 3, 4]})
    ranked, errors = rank_queries(scored, top_n=None, passthrough=["extra"])
    assert ranked.to_pylist() == [
        {"query_id": "q", "doc_id": "c", "score": 2.0, "rank": 1, "extra": 3},
        {"query_id": "q", "doc_id": "a", "score": 1.0, "rank": 2, "extra": 2},  # tie broken by doc_id
        {"query_id": "q", "doc_id": "b", "score": 1.0, "rank": 3, "extra": 1},
    ]
    assert errors["reason"].to_pylist() == ["duplicate (query_id, doc_id): first seen at row 1 of f"]
    assert rank_queries(scored, top_n=1, passthrough=[])[0].num_rows == 1
