"""The embedded demo: synthetic Mandarin speech and a tiny Paraformer built from it."""
