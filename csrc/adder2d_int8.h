// Host-side declarations of adder2d_int8, the 8-bit adder forward (schema in adder2d_int8.cpp):
//
//   S[n,co,p] = sum_{ci,kh,kw} |q(Xp[n,c,ih,iw]) - Wq[co,ci,kh,kw]|     exact, int32
//   Y[n,co,p] = alpha[co] * S + beta[co]      (max(Y, 0) if relu)       float32
//
// q(v) = clamp(round(v / scale), -127, 127) (round half to even), Wq the weight's int8 codes
// on the same scale, Xp the zero-padded input (padded taps count, code 0). On torch's stable
// ABI, as the other op entries (adder2d.h).
#pragma once

#include "adder2d.h"

namespace addernet {

// Validates adder2d_int8's arguments (naming `op` in messages) and returns the sizes.
Adder2dShape check_adder2d_int8_args(const char* op, const Tensor& input, const Tensor& weight,
                                     const Tensor& scale, const Tensor& alpha, const Tensor& beta,
                                     IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                     int64_t groups);

// Whether adder2d_int8 reads `input` as dense channels-last [N][H][W][C] and returns its output
// channels-last: torch's is_contiguous(memory_format=torch.channels_last) (the strides of
// dimensions of size 1 do not count) and not contiguous NCHW. Any other layout is read as
// contiguous NCHW (copied first if it is not) and gives contiguous NCHW output.
bool adder2d_int8_channels_last(const Tensor& input);

// The uninitialised float32 output [N, Co, OH, OW] on input's device, channels-last or contiguous
// (the strides torch.empty gives, which the fake kernel in addernet_cuda/ops.py reproduces).
Tensor adder2d_int8_empty_output(const Tensor& input, const Adder2dShape& s, bool channels_last);

}  // namespace addernet
