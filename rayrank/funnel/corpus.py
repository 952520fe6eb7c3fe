"""The corpus every stage reads: valid documents (`doc_id`, text with its title) and the rejected rows.

Rows are validated the way the index job validates them (rayrank.io.tables): a null id, an empty or
non-string text, or a doc_id seen before goes to the errors table with its reason, never dropped
silently. With a `title` column (and `use_title`), a document's text is `title + " " + text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from rayrank.config import Columns
from rayrank.funnel.config import CorpusConfig
from rayrank.io.storage import filesystem, list_parquet, storage_options
from rayrank.io.tables import DOC_KEYS, plan_shards, read_footers, read_shard, split_duplicates, split_valid


@dataclass
class Corpus:
    doc_ids: list[str]
    texts: list[str]
    errors: pa.Table
    rows_in: int

    def __post_init__(self) -> None:
        self.position = {d: i for i, d in enumerate(self.doc_ids)}

    def texts_of(self, doc_ids: list[str]) -> list[str]:
        return [self.texts[self.position[d]] for d in doc_ids]

    def table(self) -> pa.Table:
        """As a Parquet-ready table (`doc_id`, `text`): the input of the index jobs."""
        return pa.table({"doc_id": pa.array(self.doc_ids, pa.string()), "text": pa.array(self.texts, pa.string())})


def load_corpus(config: CorpusConfig, storage: dict[str, Any] | None = None) -> Corpus:
    fs, root = filesystem(config.path, storage_options(storage or {}, config.path))
    files = list_parquet(fs, root)
    columns = Columns(doc_id=config.doc_id, text=config.text)
    groups, layouts = read_footers(fs, files, columns, DOC_KEYS)
    valid, errors, rows_in = [], [], 0
    for shard in plan_shards(fs, groups, max(1, sum(sum(c) for c in groups.values()))):
        table, layout_errors = read_shard(fs, shard, layouts[shard.path], columns, DOC_KEYS)
        good, bad = split_valid(table, DOC_KEYS)
        valid.append(good)
        errors += [layout_errors, bad]
        rows_in += table.num_rows + layout_errors.num_rows
    kept, duplicates = split_duplicates(pa.concat_tables(valid, promote_options="permissive"), ("doc_id",))
    texts = kept["text"].to_pylist()
    if config.use_title and config.title in kept.column_names:
        titles = kept[config.title].to_pylist()
        texts = [f"{t} {x}" if isinstance(t, str) and t.strip() else x for t, x in zip(titles, texts)]
    return Corpus(kept["doc_id"].to_pylist(), texts, pa.concat_tables(errors + [duplicates]), rows_in)
