"""Sub-commands of ``hydra``: one module each, with ``add_args`` and ``main``."""
