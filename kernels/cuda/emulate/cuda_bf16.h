// Stub: the emulator defines __nv_bfloat16 and friends in emu_types.h (included first by cuda_emu.h).
#pragma once
