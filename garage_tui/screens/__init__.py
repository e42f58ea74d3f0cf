"""Modal screens: help, confirmations, one-line questions."""
