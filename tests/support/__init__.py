"""Helpers shared by the test suite, benchmarks and demos (real components, no mocks)."""
