"""Built-in extraction strategies, one module each; every module here is imported by the strategy registry."""
