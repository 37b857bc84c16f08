"""Selection methods: one module per method, one ``Selection`` result type for all."""
from .base import Selection
from .magnitude import select_magnitude

__all__ = ["Selection", "select_magnitude"]
