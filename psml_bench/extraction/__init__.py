"""The extraction toolkit attacks share: strategies' rounds and the surrogate's training."""
