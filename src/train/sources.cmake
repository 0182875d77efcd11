# Training: schedule, corpus split and evaluation, metrics, the trainer loop, generation.
list(APPEND MOE_SOURCES
  src/train/schedule.cpp
  src/train/corpus.cpp
  src/train/metrics.cpp
  src/train/trainer.cpp
  src/train/generate.cpp
  src/train/finetune.cpp
)
