"""pi_backend: PowerInfer-style activation-sparse LLM inference on the CPU."""
from ._lib import PiError

__version__ = "0.1.0"

__all__ = ["Llama", "LlamaState", "PiError", "__version__"]


def __getattr__(name):
    # lazy: `import pi_backend` (e.g. for the kernels) does not load llama-cpp-python
    if name == "Llama":
        from .llama import Llama
        return Llama
    if name == "LlamaState":
        from .state import LlamaState
        return LlamaState
    raise AttributeError(f"module 'pi_backend' has no attribute {name!r}")
