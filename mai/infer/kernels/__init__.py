"""Native CPU kernels for quantized inference, compiled on first use for the machine they run on."""
