"""tviz: an interactive transformer visualizer on a production-grade serving stack."""

__version__ = "0.1.0"
