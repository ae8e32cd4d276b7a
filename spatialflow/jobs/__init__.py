"""Jobs: YAML configs, the runner (clusters, run keys, tags, idempotence), history and rollback.

A job builds its outputs with ops/, then hands them to io/'s Icechunk writer
(:func:`spatialflow.io.icechunk_writer.commit_dataset`), which writes them through one fork and
commits once. jobs/ knows no format and writes no node itself; nothing below it imports it.
"""
