"""Ray glue for rayrank's batch jobs: each module has `main(argv) -> int` and does nothing at import."""
