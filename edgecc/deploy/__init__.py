"""Shipping to a device: the native loader ``edgecc-run`` built from its sources
(``native``, sources in ``native/``) and the self-contained bundle (``package``)."""
