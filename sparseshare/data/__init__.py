"""Data: corpus readers, task splits as ``datasets.Dataset``, tag schemes, vocabularies, batching, task schedules."""
