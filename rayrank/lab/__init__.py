"""The model lab: compare, sweep, fine-tune and distill rerankers (Ray-free logic; the Ray glue is in jobs/)."""
