"""Small, importable examples of extending jaxrnn (see each module's docstring)."""
