__version__ = "0.3.0"  # keep equal to pyproject.toml's version
