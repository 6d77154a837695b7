"""Model parallelism: splitting a model into stages (``partition``) and running the stages
as a streaming pipeline on threads or devices (``pipeline``)."""
