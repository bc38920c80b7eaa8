"""pi_backend: PowerInfer-style activation-sparse LLM inference on the CPU."""
__version__ = "0.1.0"
