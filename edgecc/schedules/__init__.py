"""Schedules for kernels that have no tuning record of their own: the tiling rule
(``rule_tiling``: convolutions and matrix products), transfer tuning (``transfer``: the schedule
of the most similar tuned kernel, refitted) and the trace helpers both use (``trace``). The
passes ``rule-schedule`` and ``transfer-tuning`` apply them."""
