// GoogleTest main that first sets up the runtime like the moe binary does (OpenBLAS core type,
// malloc settings), so kernels are tested on the same code paths users run.
#include <gtest/gtest.h>

#include "moe/runtime.h"

int main(int argc, char** argv) {
    moe::runtime_init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
