// The shared argument checks (adder2d.cpp, and adder2d_int8.cpp without its schema) compiled into
// the CUDA library too: the two libraries are loaded apart and share no symbols.
#include "../adder2d.cpp"
#define ADDERNET_INT8_CHECKS_ONLY
#include "../adder2d_int8.cpp"
