"""Package data: the CORINE legend and Natural Earth admin-0 countries (read with importlib.resources)."""
