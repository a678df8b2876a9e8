"""interns1-local: run InternLM's Intern-S1 family on your own machine."""

__version__ = "0.1.0"
