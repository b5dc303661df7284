"""Benchmarks and load tools: each is a module run from the repository root, ``python -m bench.<name>``
(see bench/README.md). Shared helpers live in ``bench.bench_service`` (a server on a free port, the
clips), ``bench.wrk`` and ``bench.report_output``; figures go to ``bench/results`` and docs/benchmarks.md."""
