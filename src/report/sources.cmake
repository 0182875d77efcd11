# Seeing inside a run (issue 5): statistics, metrics/trace readers, gnuplot figures, the HTML
# report, expert similarity and inspect.
list(APPEND MOE_SOURCES
  src/report/stats.cpp
  src/report/metrics.cpp
  src/report/html.cpp
  src/report/plot.cpp
  src/report/similarity.cpp
  src/report/inspect.cpp
  src/report/report.cpp
)
