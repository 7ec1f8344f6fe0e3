"""ago-search: search-based inference optimizer for deep-learning models on edge CPUs."""

__version__ = "0.1.0"
