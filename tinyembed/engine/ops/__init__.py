"""The ops: one module per backend, all with one contract, so a model family is written once.

    numpy_ops.py   NumpyOps, the float32 reference every kernel is checked against
                   (numpy_decoder.py: the decoder ops, mixed into it)
    c_ops.py       COps: NumpyOps with kernels/cpu/*.c through ctypes, GEMMs on weights packed
                   at load, fp32 or int8 (c_int8.py: the layouts and numpy twins; c_fused.py:
                   all encoder layers in one C call per thread for small batches; c_decoder.py:
                   the decoder ops, kernels/cpu/decoder_*.c, mixed into it; work_split.py: attention
                   work cut by cost across threads; arena.py: reused work buffers)
    cuda_ops.py    CudaOps: kernels/cuda/*.cu through CuPy, GEMMs in cuBLAS
                   (cuda_runtime.py: device, compile, launch, uploads; cuda_decoder.py: the
                   decoder ops; cuda_graphs.py: captured forwards for small batches;
                   cuda_emu_*.py: the CuPy stand-in that runs it on the CPU emulator)

The contract (the same name in the numpy twin, the C kernel, the CUDA kernel, its test, its bench):
    param(array) -> device array        upload_batch(batch) -> (input_ids, position_ids, cu_seqlens)
    to_host(array) -> float32 ndarray   matmul(x, w), linear(x, w, b)
    embed(...)                          bias_gelu(y, b), bias_residual_layernorm(y, b, residual, w, b, eps)
    attention(qkv, cu_seqlens, max_len, num_heads)
    pool_normalize(hidden, cu_seqlens, mode)
    decoders: embedding, rmsnorm, add_rmsnorm, head_rmsnorm, rope, gated_activation,
              decoder_attention, last_token, l2_normalize
    CPU only (--precision bf16): widen_bf16, bf16_matmul
Ops import nothing from families/ or text/, and checkpoints/ nothing from ops/ (tests/test_layout.py).
"""
