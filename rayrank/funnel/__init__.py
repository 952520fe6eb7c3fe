"""The retrieval funnel: first-stage retrieval (BM25, dense, late interaction), fusion, reranking, LLM.

`config` (FunnelConfig, the stage models), `stages` (one object per stage, each returning
`rayrank.ranking.Ranking`s; Funnel), `bm25`, `dense` (bi-encoder index files and search), `fusion`
(RRF, z-scores), `corpus`. No module here imports Ray: `rayrank funnel` (rayrank.jobs.funnel) and the Serve deployments are the glue.
"""
