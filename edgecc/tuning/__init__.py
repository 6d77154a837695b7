"""Auto-tuning with MetaSchedule: the tune API (``tune``), fast builders for the tuner
(``builder``), tuning logs on disk (``log``) and the selection of records by measuring whole
models (``selection``)."""
