"""CryoSPARC adapter for HydraPicker: pick from a workspace and land the picks back in the project.

``cryosparc_hydra pick`` creates an External job in a CryoSPARC workspace, reads the connected
exposures, picks them with :class:`hydrapicker.picker.Picker` and saves a ``particle`` output
(``location`` + ``pick_stats``) that Inspect Picks, Extract From Micrographs and 2D classification
accept. ``--exposures-cs`` works offline on exported ``.cs`` files.

cryosparc-tools is an optional extra (``pip install "hydrapicker[cryosparc]"``); nothing in this
package imports it at module level, so ``import cryosparc_hydra`` and ``cryosparc_hydra --help`` work
without it.
"""
