"""The Luna home and its settings: where every store lives (`home.py`), every setting in one table
with one precedence (`settings.py`), and disk or object storage (`storage.py`)."""
