# libFuzzer executables, one per parser (MOE_FUZZ=ON, clang; docs/fuzzing.md). Each links the
# instrumented library; `cmake --build build-fuzz --target fuzzers` builds them all.
set(MOE_FUZZ_TARGETS safetensors train_config hf_config trainer_state token_file trace metrics vocab
    tokenizer_json hf_index hf_family gguf)
add_custom_target(fuzzers)
foreach(t ${MOE_FUZZ_TARGETS})
  add_executable(fuzz_${t} ${CMAKE_CURRENT_LIST_DIR}/fuzz_${t}.cpp)
  target_include_directories(fuzz_${t} PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_compile_definitions(fuzz_${t} PRIVATE MOE_FUZZ_ENTRY)
  target_link_libraries(fuzz_${t} PRIVATE moe_lib)
  target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
  add_dependencies(fuzzers fuzz_${t})
endforeach()
