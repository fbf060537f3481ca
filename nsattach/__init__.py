"""nsattach: a container-aware process supervisor speaking uWSGI's ini dialect."""

__version__ = "0.1.0"
