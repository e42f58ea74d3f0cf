"""Analyzers: functions that read a model's runs and say what each part does.

Each analyzer returns a report object with ``to_dict()`` (JSON-safe); long ones take
``progress(stage, fraction)`` and a ``cancel`` event, like ``open_model``.
"""
