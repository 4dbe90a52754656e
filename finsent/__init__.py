"""The ``finsent`` console script: one entry point whose subcommands run each package's commands."""
