"""Studies that produce the committed results under ``benchmarks/results/``."""
