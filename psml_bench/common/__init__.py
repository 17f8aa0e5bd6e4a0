"""What several layers use: config files and hashes, devices and threads, the per-cell metrics."""
