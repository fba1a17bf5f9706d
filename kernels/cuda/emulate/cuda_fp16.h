// Stub: the emulator defines __half and friends in emu_types.h (included first by cuda_emu.h).
#pragma once
