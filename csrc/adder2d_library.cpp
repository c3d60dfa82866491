// Op schemas of the `addernet` library (torch.ops.addernet.*), on torch's stable ABI:
//
//   adder2d(X, W, b)               Y  = -sum |Xp - W| (+ b)                  [N, Co, OH, OW]
//   adder2d_input_grad(dY, X, W)   dX = sum dY * HT(W - X)  (or sign(W - X)) [N, C, H, W]
//   adder2d_weight_grad(dY, X, W)  dW = sum dY * (Xp - W)   full precision   [Co, C/g, KH, KW]
//
// adder2d's `input_grad` ("hardtanh" or "exact") only selects the rule its autograd formula
// uses for dX. The bias gradient is sum(dY) over (n, oh, ow) and needs no op of its own.
// Autograd and fake (meta) kernels are registered in Python (addernet_cuda/ops.py); the CPU
// kernels in cpu/adder2d_cpu.cpp, the CUDA kernels in cuda/*.cu (a library of their own).
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(addernet, m) {
  m.def(
      "adder2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, str input_grad=\"hardtanh\") -> Tensor");
  m.def(
      "adder2d_input_grad(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, str mode) -> Tensor");
  m.def(
      "adder2d_weight_grad(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
}
