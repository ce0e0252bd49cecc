"""Subcommands of the umbrella ``cryodiscovery`` command, one module each."""
