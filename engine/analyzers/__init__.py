"""Analyzers: functions that read a model's runs and say what each part does.

Each analyzer returns a typed report with ``to_dict()`` (``engine.serialize.to_json`` writes
it), takes ``progress(stage, fraction)`` and a ``cancel`` event (checked at every layer of
every pass, through ``engine.run.run``), and is listed by name in ``registry.ANALYZERS``.
"""
