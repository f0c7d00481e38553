"""Imported by notebook.ipynb from its own directory (replay with cwd="notebook")."""

VALUE = 42
