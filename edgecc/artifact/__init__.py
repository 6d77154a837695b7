"""The compiled artifact: its manifest (``manifest``: what a loader needs to run the
library, and what it was built from) and its verification against ONNX Runtime (``verify``)."""
