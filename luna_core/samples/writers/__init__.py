"""File writers that lay out generation metadata exactly as each tool does; `registry.py` names
them."""
