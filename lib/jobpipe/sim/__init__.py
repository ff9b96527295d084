"""Simulated external services (the BA Jobsuche API + BERUFENET, Ollama, a Signal gateway), free of
pytest and shipped in the package: the tests, the benchmarks, `jobpipe demo` and `jobpipe sim NAME`
use them. All three serve over one HTTP base (`jobpipe.sim.server`); their reference data (0.9 MB)
is package data in `jobpipe/sim/data/`."""
