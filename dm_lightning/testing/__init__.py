"""Fixtures of the tests, benchmarks and demo, not of training or inference: the tiny and
real-size random models and the float64 numpy reference of the evaluation protocol."""
