"""Readers: one class per format behind one protocol (``base.Reader``), found in ``registry``."""
