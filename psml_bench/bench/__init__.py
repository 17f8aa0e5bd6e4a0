"""The benchmark: grids as data, cells, executors, sanity checks, conformance of submissions."""
