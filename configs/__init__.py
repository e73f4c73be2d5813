"""One config per reference run (SPEC.md's runs table): ``--config=<module name>``."""
