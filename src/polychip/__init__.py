"""polychip: plan, simulate and run one LLM training job across mixed-vendor accelerators."""

__version__ = "0.1.0"
