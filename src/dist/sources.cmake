# Processes (include/moe/process_group.h): the single-process group always; the MPI one when CMake
# found MPI (MOE_WITH_MPI). Only mpi_group.cpp includes mpi.h.
list(APPEND MOE_SOURCES src/dist/local_group.cpp src/dist/parallel.cpp)
if(MOE_WITH_MPI)
  list(APPEND MOE_SOURCES src/dist/mpi_group.cpp)
endif()
