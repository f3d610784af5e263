"""Facts: accelerators (catalog), cluster, model, training job; validated input files."""
