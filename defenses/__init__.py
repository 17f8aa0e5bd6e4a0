"""Built-in defenses, one module each; every module here is imported by the defense registry."""
