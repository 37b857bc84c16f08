"""dnas: differentiable neural architecture search with a careful selection step."""

__version__ = "0.1.0"
