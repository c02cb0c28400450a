"""Parameter-efficiency report from finished runs: `python -m jaxcollective.report`.

The report: loading runs, selecting and grouping them, statistics, tables, figures, the command.
"""
