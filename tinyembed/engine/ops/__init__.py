"""The ops: one module per backend, all with one contract, so a model family is written once.

    numpy_ops.py   NumpyOps, the float32 reference every kernel is checked against
                   (numpy_decoder.py: the decoder ops, mixed into it)
    c_ops.py       COps: NumpyOps with kernels/cpu/*.c through ctypes (GEMMs stay in BLAS)
    cuda_ops.py    CudaOps: kernels/cuda/*.cu through CuPy, GEMMs in cuBLAS
                   (cuda_runtime.py: device, compile, launch, uploads; cuda_decoder.py: the
                   decoder ops; cuda_graphs.py: captured forwards for small batches)

The contract (the same name in the numpy twin, the C kernel, the CUDA kernel, its test, its bench):
    param(array) -> device array        upload_batch(batch) -> (input_ids, position_ids, cu_seqlens)
    to_host(array) -> float32 ndarray   matmul(x, w), linear(x, w, b)
    embed(...)                          bias_gelu(y, b), bias_residual_layernorm(y, b, residual, w, b, eps)
    attention(qkv, cu_seqlens, max_len, num_heads)
    pool_normalize(hidden, cu_seqlens, mode)
    decoders: embedding, rmsnorm, add_rmsnorm, head_rmsnorm, rope, gated_activation,
              decoder_attention, last_token, l2_normalize
Ops import nothing from families/ or text/, and checkpoints/ nothing from ops/ (tests/test_layout.py).
"""
