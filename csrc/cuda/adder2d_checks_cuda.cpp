// The shared argument checks (adder2d.cpp) compiled into the CUDA library too: the two
// libraries are loaded apart and share no symbols.
#include "../adder2d.cpp"
