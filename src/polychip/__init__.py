"""polychip: plan, simulate and run one LLM training job across mixed-vendor accelerators."""
