"""CLI commands, one module each; every public module here is registered by vitreg.cli."""
