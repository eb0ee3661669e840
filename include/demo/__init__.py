"""`make demo`: the sample-data generator, the whole-workflow runner and its audit.

It may import anything of ours; nothing imports it but tests and benchmarks.
"""
