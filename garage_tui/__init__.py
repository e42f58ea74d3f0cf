"""Model Garage's shell: the ``garage`` command and the Textual app over the engine."""
