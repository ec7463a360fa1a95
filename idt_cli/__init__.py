"""The `idt` command line: run the whole system locally, load the office registry."""
