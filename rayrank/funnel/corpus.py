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
from rayrank.io.tables import DOC_KEYS, read_unique


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
    kept, errors, rows_in = read_unique(fs, list_parquet(fs, root), Columns(doc_id=config.doc_id, text=config.text),
                                        DOC_KEYS, "doc_id")
    texts = kept["text"].to_pylist()
    if config.use_title and config.title in kept.column_names:
        titles = kept[config.title].to_pylist()
        texts = [f"{t} {x}" if isinstance(t, str) and t.strip() else x for t, x in zip(titles, texts)]
    return Corpus(kept["doc_id"].to_pylist(), texts, errors, rows_in)
