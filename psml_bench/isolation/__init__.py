"""Where untrusted code runs: the sandbox, the attack process, jailed defenses, surrogate training."""
