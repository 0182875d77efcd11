# Processes (include/moe/process_group.h): the single-process group always; the MPI one when CMake
# found MPI (MOE_WITH_MPI). Only mpi_group.cpp includes mpi.h.
# mpi_group.cpp is compiled as the object library moe_mpi (CMakeLists.txt), with MPI's flags.
list(APPEND MOE_SOURCES src/dist/local_group.cpp src/dist/parallel.cpp)
if(MOE_WITH_MPI)
  set_source_files_properties(src/dist/parallel.cpp PROPERTIES COMPILE_DEFINITIONS MOE_WITH_MPI)
endif()
