"""`mai recipe`: one resumable command from web text and a teacher to an evaluated, quantized, served model.

A recipe (YAML, :mod:`mai.recipe.config`) lists optional stages; :mod:`mai.recipe.runner` runs each with the
same library function as its own command, into a partial folder that is renamed into place with a manifest
(:mod:`mai.recipe.manifest`), so a rerun skips what is done and a killed run finishes where it stopped.
"""
