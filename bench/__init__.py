"""tuwen's benchmarks (`make bench`); results are recorded in docs/BENCHMARKS.md."""
