"""Built-in attacks, one module each; every module here is imported by the attack registry."""
