"""NumPy simulator for NIR graphs (knows nothing of compression)."""

from .config import SimConfig
from .ops import REGISTRY
from .walker import RunResult, Walker, simulate

__all__ = ["SimConfig", "Walker", "RunResult", "simulate", "REGISTRY"]
