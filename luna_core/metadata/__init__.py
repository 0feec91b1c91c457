"""Generation metadata as each tool writes it: one parser per tool family, and `dispatch.py`,
which picks the parser for a file's text items."""
