"""Regenerate the sample's Parquet table and TREC qrels from sample.yaml (the human-readable source).

Run after editing the YAML: `python data/sample/build.py`.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).resolve().parent


def main() -> None:
    queries = yaml.safe_load((HERE / "sample.yaml").read_text())
    rows, qrels = [], []
    for q in queries:
        for doc_id, grade, bm25_rank, text in sorted(q["candidates"], key=lambda c: c[2]):
            rows.append({"query_id": q["id"], "query": q["query"], "doc_id": doc_id, "text": text,
                         "bm25_rank": bm25_rank})
            qrels.append(f"{q['id']} 0 {doc_id} {grade}")
    schema = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("doc_id", pa.string()),
                        ("text", pa.string()), ("bm25_rank", pa.int32())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), HERE / "candidates.parquet")
    (HERE / "qrels.txt").write_text("\n".join(qrels) + "\n")
    print(f"{len(queries)} queries, {len(rows)} candidates")


if __name__ == "__main__":
    main()
