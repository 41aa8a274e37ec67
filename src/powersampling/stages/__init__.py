"""One function per workflow stage, called by the thin scripts in ``workflow/scripts``.

A stage has one name: rule ``x`` runs ``workflow/scripts/x.py``, which calls ``x`` from the
module of this package named after the rule's file (a rule of ``rules/dps.smk`` is in
``powersampling.stages.dps``).

Each function reads its inputs, calls the library, and writes its outputs atomically.
They take plain values (paths, config sections), never Snakemake objects, so they can be
run and tested without Snakemake.
"""
