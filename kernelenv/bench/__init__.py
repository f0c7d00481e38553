"""Benchmarks that put kernelenv beside its floor and its peers (``kernelenv bench``)."""
