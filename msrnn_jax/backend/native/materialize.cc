// An identity that XLA cannot fuse through, as an XLA FFI custom call on CPU.
//
// Why: XLA:CPU fuses an elementwise value into every consumer and computes
// it again in each. A gradient that several gate gradients read, and that
// itself sums a chain of earlier ones (the memory M of an ST-LSTM passes
// through all layers of a time step), was recomputed by every consumer in
// every layer below: fusions of up to 88 operations reading 26 arrays.
// A custom call's operand must be in memory, so the value is computed once.
//
// msrnn_materialize(x) -> x, any dtype and shape. The result is aliased to
// the operand (input_output_aliases), so nothing is copied; the copy below
// runs only if XLA ever hands over two buffers.

#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error Materialize(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out) {
  if (out->untyped_data() != x.untyped_data()) {
    std::memcpy(out->untyped_data(), x.untyped_data(), x.size_bytes());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsrnnMaterialize, Materialize,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
