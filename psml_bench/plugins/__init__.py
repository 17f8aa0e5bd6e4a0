"""Finding and loading third-party plugins: submission folders and their manifests."""
