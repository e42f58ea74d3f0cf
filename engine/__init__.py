"""Model Garage's engine: loading, anatomy, addresses, hooks and everything built on them.

UI-free by contract: nothing under ``engine`` imports textual, rich or plotext.
"""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
