// Writes a small known tensor dump to the path in argv[1], so that tensor_dump_interop_test.sh can
// check that the Python reader (tensor_dump.py) reads exactly what the C writer wrote.
#include <stddef.h>
#include <stdint.h>

#include "framework/core/check.h"
#include "tests/reference/tensor_dump.h"

int main(int argc, char **argv) {
    if (argc != 2) core_usage_error("usage: tensor_dump_example OUT.bin");
    const float a[6] = {-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f};  // (2, 3)
    const int32_t ids[3] = {7, -1, 2147483647};                    // (3)
    const uint8_t text[6] = {'k', ' ', '=', ' ', 'v', '\n'};      // (6)
    const float s = 3.5f;                                          // scalar
    const int64_t da[2] = {2, 3}, di[1] = {3}, dt[1] = {6}, de[2] = {0, 4};
    TensorDump *td = tdump_open(argv[1]);
    tdump_f32(td, "a", a, 2, da);
    tdump_i32(td, "ids", ids, 1, di);
    tdump_u8(td, "config_text", text, 1, dt);
    tdump_f32(td, "scalar", &s, 0, NULL);
    tdump_f32(td, "empty", NULL, 2, de);
    tdump_close(td);
    return 0;
}
