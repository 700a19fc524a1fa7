"""Vendor simulators: in-process stand-ins for sandbox destinations, tests and benchmarks."""
