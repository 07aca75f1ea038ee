"""Robustness to common image corruptions (ImageNet-C style): the corruptions, the benchmark
runner with its CE/mCE scores, and the figures."""
