# Routers (one file each) and balancing losses.
list(APPEND MOE_SOURCES
)
