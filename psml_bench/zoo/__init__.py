"""Zoos: config, data, training, build, latency profiles, and the opened zoo."""
