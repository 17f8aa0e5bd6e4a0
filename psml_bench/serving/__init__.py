"""The serving system: routing policies, the server, the simulated service, the live HTTP service."""
