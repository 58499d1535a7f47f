"""sysclone: capture a golden Linux machine and install it onto bare metal."""

__version__ = "0.1.0"
