"""bgl: Bilevel Generative Learning for low-light vision (Liu et al., ACM MM 2023)."""

__version__ = "0.1.0"
