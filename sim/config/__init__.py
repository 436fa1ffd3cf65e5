"""Scenario files: the schema (`schema`), the loader that resolves them into simulator objects (`scenario`)
and the fixed-batch experiment contract shared with the torch backend (`experiments`)."""
