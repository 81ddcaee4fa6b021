"""The `tuwen` command."""
