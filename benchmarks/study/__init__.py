"""The paper-table study that ``benchmarks/paper_table.py`` runs (docs/results/study.md).

``plan``: tasks, methods, variants, data seeds and budgets; ``runs``: the pre-training and
downstream runs and running them side by side; ``timing``: the clock and the time estimate;
``stats``: the measurements and their summaries; ``paired``: paired differences against GVSL;
``clustering``: the silhouettes of the local features; ``figures``: the t-SNE figures;
``discussion``: the computed discussion; ``record``: earlier results reused by seed;
``report``: ``results.json`` and ``RESULTS.md``.

Imported as ``study`` with ``benchmarks/`` on the path, as a script there has it.
"""
