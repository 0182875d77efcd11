// Internal: the MPI side of init_parallel (src/dist/mpi_group.cpp, built only with MOE_WITH_MPI).
#pragma once
#include <string>

#include "moe/process_group.h"

namespace moe {
ParallelGroups mpi_parallel_groups(int expert_parallel);
void mpi_finalize();
[[noreturn]] void mpi_abort(const std::string& msg);
}  // namespace moe
