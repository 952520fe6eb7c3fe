"""Ray Serve glue: the `Reranker` deployment, its HTTP API, and the typed application builder.

Scoring is the engine's (`rayrank.Reranker.score_pairs`); this package only batches, admits,
caches and translates HTTP.
"""
