"""Compression beside the compile path: int8/fp16 quantization (``quantize``), channel
pruning (``prune``), knowledge distillation (``distill``), labelled data sets (``datasets``)
and accuracy evaluation (``evaluate``). These call the compile stages, never the other way."""
