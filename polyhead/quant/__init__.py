"""Weight-only quantization: int8 / int4 weights (quantized here or kept from a GGUF file) served
by native kernels with float activations. format.py is the layout, linear.py the layers,
attach.py swaps them into a built model, tuning.py picks each layer's path by row count, gguf.py
reads GGUF blocks without dequantizing, checkpoint.py writes and reads `polyhead quantize` folders."""
