"""Side-by-side benchmarks: tidings next to a raw redis-py baseline, in one process and one run.

Absolute rates on a shared machine mean little; the ratio of tidings to the baseline measured
alongside it is the figure to quote (DESIGN.md, "Facts measured").
"""
