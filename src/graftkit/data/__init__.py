"""Data: sources and audit, image decoding, transforms, datasets."""
