"""The reports: pages, tables and figures made from result folders.

``render`` (tables, the page template, output files), ``figures`` (matplotlib helpers, layer
plots) and ``runs`` (reading a run dir) serve the reports: ``paper`` (``culnig report``: Table 2,
Figure 4, Table 15, ...), ``demo`` (``culnig demo``), ``finetune`` (Figure 5) and ``lape``
(``culnig report-lape``).
"""
