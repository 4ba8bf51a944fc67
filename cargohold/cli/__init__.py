"""The ``cargohold`` command. One small module per command group, registered in ``main``."""
