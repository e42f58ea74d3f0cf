"""Drop-in extensions: every module in this package is imported the first time a registry
is asked for a name, so a new intervention, analyzer, blend op or site rule is one file
here (plus its test). See "Extending" in the README.
"""
