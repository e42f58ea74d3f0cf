"""Widgets of the garage: one per file."""
