// init_parallel: single-process groups, or MPI's when launched under mpirun (src/dist/).
#include <cstdlib>

#include "moe/error.h"
#include "moe/process_group.h"
#ifdef MOE_WITH_MPI
#include "dist/mpi_group.h"
#endif

namespace moe {

std::string ParallelGroups::layout() const {
    return "ep" + std::to_string(ep_size()) + "xdp" + std::to_string(dp_size());
}

bool mpi_available() {
#ifdef MOE_WITH_MPI
    return true;
#else
    return false;
#endif
}

bool launched_by_mpirun() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
        if (std::getenv(v)) return true;
    return false;
}

ParallelGroups init_parallel(bool use_mpi, int expert_parallel) {
    if (!use_mpi) {
        if (expert_parallel > 1)
            fail("--expert-parallel {}: needs {} ranks or a multiple; start the command under "
                 "mpirun (mpirun -np {} build/moe ...)",
                 expert_parallel, expert_parallel, expert_parallel);
        ParallelGroups g;
        g.world = g.expert = g.data = make_local_group();
        return g;
    }
#ifdef MOE_WITH_MPI
    return mpi_parallel_groups(expert_parallel);
#else
    fail("this moe was built without MPI; install openmpi-bin and libopenmpi-dev (scripts/setup.sh "
         "with MOE_WITH_TESTS=1) and rebuild");
#endif
}

void finalize_parallel() {
#ifdef MOE_WITH_MPI
    mpi_finalize();
#endif
}

}  // namespace moe
