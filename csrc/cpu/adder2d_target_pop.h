// Closes the target region that an AVX2 or AVX-512 translation unit (adder2d_cpu_avx2.cpp,
// adder2d_cpu_avx512.cpp, adder2d_int8_avx2.cpp, adder2d_int8_avx512.cpp) opens with a GCC/Clang target pragma after its standard headers, so the
// code that follows compiles for the baseline ISA again. Included once, at the end of that region.
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
