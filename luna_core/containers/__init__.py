"""Bounded readers of image containers (PNG, JPEG, WebP, EXIF, XMP); `probe.py` reads one file's
structure and text items."""
