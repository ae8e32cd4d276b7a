"""Jobs: the only place that opens writable Icechunk sessions (writer, configs, runner, history)."""
