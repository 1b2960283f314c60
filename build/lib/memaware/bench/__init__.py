"""Side-by-side speed benchmarks (``memaware bench ...`` and the scripts under ``benchmarks/``)."""
