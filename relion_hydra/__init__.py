"""RELION adapter: HydraPicker as a RELION "External" job (3.1, 4.x and 5.x).

``bin/relion_hydra_pick`` picks particles from a micrographs STAR and writes RELION's coordinate
files and output nodes; ``bin/relion_hydra_train`` trains a few-shot head from manual picks.
The contract (how RELION calls the program, which files it expects) is described in the README's
"Using HydraPicker from RELION" section. Modules: :mod:`.args` (command line), :mod:`.version` (which RELION),
:mod:`.paths` (output path convention), :mod:`.nodes` (STAR files for the pipeline),
:mod:`.jobdir` (exit files, abort, continue), :mod:`.logfile` (logfile.pdf),
:mod:`.pick_job` and :mod:`.train_job` (the two programs).
"""
