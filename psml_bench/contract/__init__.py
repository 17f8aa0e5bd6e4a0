"""The contract plugins see: specs, requests, the target, knowledge, plugin bases, errors, registries."""
