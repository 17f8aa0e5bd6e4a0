"""The serving system: routing policies, the front end, the simulated service, the live HTTP service."""
