// oneDNN convolutions as XLA FFI custom calls (CPU, NHWC x HWIO).
//
// Why: XLA:CPU runs the kernel gradient of a convolution on a generic path
// (a fifth of its matmul rate) and our matrix-product replacement still has
// to materialise patch matrices (docs/performance.md). oneDNN, the library
// behind PyTorch's CPU convolutions, computes forward, input gradient and
// kernel gradient directly from NHWC activations at close to the matmul
// rate. These handlers read and write XLA's buffers in place; the (small)
// kernels are reordered into the blocked layout oneDNN prefers, and so are
// the activations of the kernel gradient where oneDNN asks for it: its
// kernel-gradient primitive picks their layout itself (format `any`). On
// CPUs whose fastest kernel gradient reads NHWC (brgemm, AVX-512 and up)
// that is NHWC and nothing is copied; on AVX2 it is oneDNN's 8-channel
// blocked layout, which its AVX2 kernel reads at 2.2x the rate it reads
// NHWC at 64x64 (docs/performance.md), for copies costing ~1% of the call.
//
// Handlers (attributes: strides = [sh, sw], padding = [top, bottom, left, right]):
//   msrnn_onednn_conv_fwd(x[N,H,W,C], w[KH,KW,C,O]) -> y[N,OH,OW,O]
//   msrnn_onednn_conv_bwd(x, w, dy[N,OH,OW,O]) -> (dx[N,H,W,C], dw[KH,KW,C,O])
//     attribute parts: 3 computes both, 1 only dx, 2 only dw (the other
//     output is left unwritten; for benchmarks timing one gradient alone).
//
// Data types: x (and so y, dy, dx) is float32 or bfloat16, the compute
// type; w may be either, independently: the reorder into the blocked layout
// also converts it, so float32 master weights need no separate cast. dw is
// always float32: oneDNN accumulates in float32 whatever the operands, and
// rounding the sum to bfloat16 would throw away what the float32 master
// weights can hold. oneDNN picks its kernels (AMX, AVX-512 BF16, ...) for
// the CPU it runs on; msrnn_onednn_cpu_isa and msrnn_onednn_probe tell the
// Python side which, so it can route bfloat16 elsewhere on CPUs without
// native bfloat16 arithmetic.
//
// Primitives are created once per shape and data types and cached; streams
// belong to the calling thread. Calls run one at a time (see Guarded): each
// already spreads over every core with OpenMP.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#include <sys/mman.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine* eng = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *eng;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream s(Engine());
  return s;
}

// A growable buffer for scratchpads, blocked kernels and kernel gradients,
// reused across calls (no allocation per call). One per use and handler,
// shared by all threads: calls run one at a time (Guarded). It is mapped
// outside malloc's heap. A training step's temporaries reuse one freed heap
// block step after step (backend/allocator.py); a buffer first allocated or
// grown in a later step (a call landing on a thread, or a shape, it had not
// met before) could be carved out of that block, and the next step's
// temporaries would then take a new one: the process would hold a second
// step's worth of memory from then on.
struct Scratch {
  void* ptr = nullptr;
  size_t size = 0;
  void* get(size_t n) {
    if (n > size) {
      if (ptr != nullptr) munmap(ptr, size);
      ptr = nullptr;
      size = 0;
      size_t want = (n + 4095) / 4096 * 4096;
      void* p = mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      ptr = p;
      size = want;
    }
    return ptr;
  }
};

struct Shape {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;
  dt act = dt::f32;    // x, y, dy, dx: the compute type
  dt wei = dt::f32;    // the user's kernel buffer
  std::string key(char kind) const {
    std::string k(1, kind);
    for (int64_t v : {n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr,
                      static_cast<int64_t>(act), static_cast<int64_t>(wei)}) {
      k += ',';
      k += std::to_string(v);
    }
    return k;
  }
  memory::desc src() const { return {{n, c, h, w}, act, tag::nhwc}; }
  memory::desc dst() const { return {{n, o, oh, ow}, act, tag::nhwc}; }
  memory::desc wei_user() const { return {{o, c, kh, kw}, wei, tag::hwio}; }
  // The kernel as the primitives read it: compute type, layout of their choice.
  memory::desc wei_any() const { return {{o, c, kh, kw}, act, tag::any}; }
  // The kernel gradient: float32 always (see the file comment).
  memory::desc dwei_user() const { return {{o, c, kh, kw}, dt::f32, tag::hwio}; }
  memory::desc dwei_any() const { return {{o, c, kh, kw}, dt::f32, tag::any}; }
  // Activations in the layout of the kernel gradient's choice.
  memory::desc src_any() const { return {{n, c, h, w}, act, tag::any}; }
  memory::desc dst_any() const { return {{n, o, oh, ow}, act, tag::any}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc FwdPd(const Shape& s) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      s.src(), s.wei_any(), s.dst(), s.strides(), s.pad_l(), s.pad_r(), UserScratchpad());
}

dnnl::convolution_backward_data::primitive_desc BwdDataPd(
    const Shape& s, const dnnl::convolution_forward::primitive_desc& hint) {
  return dnnl::convolution_backward_data::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, s.src(), s.wei_any(), s.dst(),
      s.strides(), s.pad_l(), s.pad_r(), hint, UserScratchpad());
}

dnnl::convolution_backward_weights::primitive_desc BwdWeightsPd(
    const Shape& s, const dnnl::convolution_forward::primitive_desc& hint) {
  return dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, s.src_any(), s.dwei_any(), s.dst_any(),
      s.strides(), s.pad_l(), s.pad_r(), hint, UserScratchpad());
}

// Everything one convolution shape needs, built once.
struct Entry {
  dnnl::primitive conv;            // forward, or backward data
  dnnl::primitive conv_w;          // backward weights (backward entries only)
  dnnl::reorder w_to_blocked;      // user HWIO kernel -> the layout/type `conv` wants
  dnnl::reorder dw_to_user;        // kernel gradient layout -> float32 HWIO
  dnnl::reorder x_to_blocked;      // NHWC x -> the layout `conv_w` reads
  dnnl::reorder dy_to_blocked;     // NHWC dy -> the layout `conv_w` reads
  memory::desc w_blocked, dw_blocked, x_blocked, dy_blocked;
  bool reorder_w = false, reorder_dw = false, reorder_x = false, reorder_dy = false;
  size_t scratch = 0, scratch_w = 0;
};

// Whether a `from` buffer must be copied into layout `to`; if so, sets the reorder.
bool ReorderIfNeeded(const memory::desc& from, const memory::desc& to, dnnl::reorder* r) {
  if (from == to) return false;
  *r = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
  return true;
}

// Records the kernel layout `e->conv` reads and, if it is not the user's
// buffer as it is (layout and type), the reorder that produces it.
void SetKernelLayout(const Shape& s, const memory::desc& wanted, Entry* e) {
  e->w_blocked = wanted;
  e->reorder_w = wanted != s.wei_user();
  if (e->reorder_w) e->w_to_blocked = dnnl::reorder(dnnl::reorder::primitive_desc(
      Engine(), s.wei_user(), Engine(), wanted));
}

Entry MakeFwd(const Shape& s) {
  Entry e;
  auto pd = FwdPd(s);
  e.conv = dnnl::convolution_forward(pd);
  SetKernelLayout(s, pd.weights_desc(), &e);
  e.scratch = pd.scratchpad_desc().get_size();
  return e;
}

Entry MakeBwd(const Shape& s) {
  Entry e;
  auto hint = FwdPd(s);
  auto dpd = BwdDataPd(s, hint);
  auto wpd = BwdWeightsPd(s, hint);
  e.conv = dnnl::convolution_backward_data(dpd);
  e.conv_w = dnnl::convolution_backward_weights(wpd);
  SetKernelLayout(s, dpd.weights_desc(), &e);
  e.dw_blocked = wpd.diff_weights_desc();
  e.reorder_dw = e.dw_blocked != s.dwei_user();
  if (e.reorder_dw) e.dw_to_user = dnnl::reorder(dnnl::reorder::primitive_desc(
      Engine(), e.dw_blocked, Engine(), s.dwei_user()));
  e.x_blocked = wpd.src_desc();
  e.reorder_x = ReorderIfNeeded(s.src(), e.x_blocked, &e.x_to_blocked);
  e.dy_blocked = wpd.diff_dst_desc();
  e.reorder_dy = ReorderIfNeeded(s.dst(), e.dy_blocked, &e.dy_to_blocked);
  e.scratch = dpd.scratchpad_desc().get_size();
  e.scratch_w = wpd.scratchpad_desc().get_size();
  return e;
}

const Entry& Lookup(const Shape& s, char kind) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string, std::unique_ptr<Entry>>();
  std::string key = s.key(kind);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache->find(key);
    if (it != cache->end()) return *it->second;
  }
  // Built outside the lock (creating primitives JIT-compiles kernels, ~ms);
  // a concurrent duplicate is harmless, the first insertion wins.
  auto entry = std::make_unique<Entry>(kind == 'f' ? MakeFwd(s) : MakeBwd(s));
  std::lock_guard<std::mutex> lock(mu);
  auto [it, inserted] = cache->emplace(key, std::move(entry));
  return *it->second;
}

// The oneDNN type of a float32 / bfloat16 buffer; false for anything else.
bool DnnlType(ffi::DataType t, dt* out) {
  switch (t) {
    case ffi::DataType::F32: *out = dt::f32; return true;
    case ffi::DataType::BF16: *out = dt::bf16; return true;
    default: return false;
  }
}

ffi::Error ParseShape(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w,
                      ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                      Shape* s) {
  auto x_dims = x.dimensions();
  auto w_dims = w.dimensions();
  if (x_dims.size() != 4 || w_dims.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: x must be NHWC and w HWIO (rank 4)");
  if (strides.size() != 2 || padding.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: strides needs 2 and padding 4 entries");
  if (w_dims[2] != x_dims[3])
    return ffi::Error::InvalidArgument("onednn conv: kernel input channels != x channels");
  *s = Shape{x_dims[0], x_dims[1], x_dims[2], x_dims[3], w_dims[0], w_dims[1], w_dims[3],
             0, 0, strides[0], strides[1], padding[0], padding[1], padding[2], padding[3]};
  if (!DnnlType(x.element_type(), &s->act) || !DnnlType(w.element_type(), &s->wei))
    return ffi::Error::InvalidArgument("onednn conv: x and w must be float32 or bfloat16");
  s->oh = (s->h + s->pt + s->pb - s->kh) / s->sh + 1;
  s->ow = (s->w + s->pl + s->pr - s->kw) / s->sw + 1;
  return ffi::Error::Success();
}

ffi::Error CheckType(ffi::DataType t, ffi::DataType want, const char* what) {
  if (t == want) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string("onednn conv: unexpected data type of ") + what);
}

// Runs a handler body one call at a time, turning oneDNN exceptions into
// FFI errors. XLA runs independent thunks concurrently (a cell's gate
// convolutions, one call per device of a sharded step); two OpenMP teams on
// the same cores each stall at their barriers for the other's preempted
// threads, so overlapping calls take longer than the same calls in turn
// (in a bfloat16 PredRNN step, forward calls took 1.8x their standalone
// time).
// One lock for every handler (a static inside the template would be one per
// handler body, letting a forward and a backward call overlap).
std::mutex& Cores() {
  static std::mutex* cores = new std::mutex();
  return *cores;
}

template <typename F>
ffi::Error Guarded(F&& f) {
  std::lock_guard<std::mutex> lock(Cores());
  try {
    f();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("onednn conv: out of memory for a scratch buffer");
  }
  return ffi::Error::Success();
}

void RunWithScratch(const dnnl::primitive& p, size_t scratch, Scratch& buf,
                    std::unordered_map<int, memory> args) {
  if (scratch > 0) {
    memory::desc md({static_cast<int64_t>(scratch)}, dt::u8, tag::x);
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(md, Engine(), buf.get(scratch)));
  }
  p.execute(Stream(), args);
}

// `user` as a primitive reads it: itself, or a copy made by `to` in the
// layout (and type) `blocked`, in `buf`.
memory Reordered(memory user, bool reorder, const dnnl::reorder& to,
                 const memory::desc& blocked, Scratch& buf) {
  if (!reorder) return user;
  memory copy(blocked, Engine(), buf.get(blocked.get_size()));
  to.execute(Stream(), user, copy);
  return copy;
}

// The kernel in the layout `e.conv` reads.
memory KernelFor(const Entry& e, const Shape& s, void* w, Scratch& buf) {
  return Reordered(memory(s.wei_user(), Engine(), w), e.reorder_w, e.w_to_blocked,
                   e.w_blocked, buf);
}

ffi::Error ConvFwdImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  Shape s;
  if (auto err = ParseShape(x, w, strides, padding, &s); err.failure()) return err;
  if (auto err = CheckType(y->element_type(), x.element_type(), "y"); err.failure()) return err;
  return Guarded([&] {
    static Scratch wbuf, sbuf;
    const Entry& e = Lookup(s, 'f');
    memory wm = KernelFor(e, s, w.untyped_data(), wbuf);
    RunWithScratch(e.conv, e.scratch, sbuf,
                   {{DNNL_ARG_SRC, memory(s.src(), Engine(), x.untyped_data())},
                    {DNNL_ARG_WEIGHTS, wm},
                    {DNNL_ARG_DST, memory(s.dst(), Engine(), y->untyped_data())}});
    Stream().wait();
  });
}

ffi::Error ConvBwdImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer dy,
                       ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dw,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                       int64_t parts) {
  Shape s;
  if (auto err = ParseShape(x, w, strides, padding, &s); err.failure()) return err;
  if (auto err = CheckType(dy.element_type(), x.element_type(), "dy"); err.failure()) return err;
  if (auto err = CheckType(dx->element_type(), x.element_type(), "dx"); err.failure()) return err;
  if (auto err = CheckType(dw->element_type(), ffi::DataType::F32, "dw"); err.failure())
    return err;
  return Guarded([&] {
    static Scratch wbuf, dwbuf, sbuf, xbuf, dybuf;
    const Entry& e = Lookup(s, 'b');
    memory src(s.src(), Engine(), x.untyped_data());
    memory ddst(s.dst(), Engine(), dy.untyped_data());
    if (parts & 1) {
      memory wm = KernelFor(e, s, w.untyped_data(), wbuf);
      RunWithScratch(e.conv, e.scratch, sbuf,
                     {{DNNL_ARG_DIFF_SRC, memory(s.src(), Engine(), dx->untyped_data())},
                      {DNNL_ARG_WEIGHTS, wm},
                      {DNNL_ARG_DIFF_DST, ddst}});
    }
    if (!(parts & 2)) {
      Stream().wait();
      return;
    }
    memory dw_user(s.dwei_user(), Engine(), dw->untyped_data());
    memory dw_out = e.reorder_dw
        ? memory(e.dw_blocked, Engine(), dwbuf.get(e.dw_blocked.get_size())) : dw_user;
    RunWithScratch(e.conv_w, e.scratch_w, sbuf,
                   {{DNNL_ARG_SRC, Reordered(src, e.reorder_x, e.x_to_blocked, e.x_blocked, xbuf)},
                    {DNNL_ARG_DIFF_DST,
                     Reordered(ddst, e.reorder_dy, e.dy_to_blocked, e.dy_blocked, dybuf)},
                    {DNNL_ARG_DIFF_WEIGHTS, dw_out}});
    if (e.reorder_dw) e.dw_to_user.execute(Stream(), dw_out, dw_user);
    Stream().wait();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsrnnOnednnConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsrnnOnednnConvBwd, ConvBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<int64_t>("parts"));

// Version string of the linked oneDNN, for logs and benchmark records.
extern "C" __attribute__((visibility("default"))) const char* msrnn_onednn_version() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch);
  }();
  return v.c_str();
}

// The instruction set oneDNN dispatches to on this CPU (its effective ISA,
// after any ONEDNN_MAX_CPU_ISA limit), by oneDNN's name for it.
extern "C" __attribute__((visibility("default"))) const char* msrnn_onednn_cpu_isa() {
  switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2_vnni_2: return "avx2_vnni_2";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_fp16: return "avx512_core_fp16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "other";
  }
}

// The implementations oneDNN picks for the three primitives at a ConvLSTM
// gate-like shape (2x16x16, 64 -> 64, 3x3) in float32 (bf16 = 0) or
// bfloat16 (bf16 = 1): "fwd=...;bwd_data=...;bwd_weights=...", or
// "error: ..." if oneDNN has none. A "ref" implementation means oneDNN found
// no optimised kernel for this CPU (slow: route those convolutions elsewhere).
extern "C" __attribute__((visibility("default"))) const char* msrnn_onednn_probe(int bf16) {
  static std::mutex mu;
  static std::string results[2];
  std::lock_guard<std::mutex> lock(mu);
  std::string& out = results[bf16 ? 1 : 0];
  if (!out.empty()) return out.c_str();
  Shape s{2, 16, 16, 64, 3, 3, 64, 16, 16, 1, 1, 1, 1, 1, 1};
  s.act = s.wei = bf16 ? dt::bf16 : dt::f32;
  try {
    auto hint = FwdPd(s);
    out = std::string("fwd=") + hint.impl_info_str() +
          ";bwd_data=" + BwdDataPd(s, hint).impl_info_str() +
          ";bwd_weights=" + BwdWeightsPd(s, hint).impl_info_str();
  } catch (const dnnl::error& e) {
    out = std::string("error: ") + e.what();
  }
  return out.c_str();
}
