"""Benchmarks: figures (medians of interleaved runs, ratios against the peer measured in
the same run), never timed assertions."""
