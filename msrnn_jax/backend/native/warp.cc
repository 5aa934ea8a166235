// Bilinear sampling along K learned flows (TrajGRU's links, MotionGRU's
// filters) and its gradient, as XLA FFI custom calls on CPU.
//
// Why: XLA:CPU lowers the gradient's scatter-add into the image to serial
// loops and its gathers to per-element index arithmetic; the backward pass
// of one 64x64 TrajGRU layer step took ~60 ms per batch item, most of a
// training step. These loops read each sample's four taps as contiguous
// channel vectors, as PyTorch's grid_sample kernels do.
//
// Handlers (D = float32 or bfloat16, the same for image, flow and out):
//   msrnn_warp_fwd(image[B,H,W,C] D, flow[B,H,W,K,2] D) -> out[B,H,W,K,C] D
//   msrnn_warp_bwd(image, flow, d_out[B,H,W,K,C] D)
//       -> (d_image[B,H,W,C] f32, d_flow[B,H,W,K,2] f32)
// flow[..., 0] displaces along the width (x), flow[..., 1] along the height
// (y), in pixels; taps outside the image read zeros. Coordinates, tap
// weights and every sum are float32.
//
// Threads (OpenMP): the forward pass and the flow gradient split the rows;
// the image gradient, a scatter, splits (batch item, channel block) pairs,
// so no two threads ever add into the same element. Calls run one at a time:
// XLA runs independent thunks concurrently (one per device of a sharded
// step), and two OpenMP teams on the same cores wait at their barriers for
// each other's preempted threads.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

std::mutex& Cores() {
  static std::mutex cores;
  return cores;
}

struct Dims {
  int64_t b, h, w, k, c;
};

inline float Load(const float* p, int64_t i) { return p[i]; }
inline float Load(const uint16_t* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void Store(float* p, int64_t i, float v) { p[i] = v; }
inline void Store(uint16_t* p, int64_t i, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if (std::isnan(v)) {
    p[i] = static_cast<uint16_t>((bits >> 16) | 0x40);
    return;
  }
  bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest even
  p[i] = static_cast<uint16_t>(bits >> 16);
}

// The four taps of the sample at (y, x) displaced by (fx, fy): flat source
// pixel (0 outside the image), weight (zero outside the image), and the
// weight's derivatives along x and y.
struct Taps {
  int64_t index[4];
  float weight[4], grad_x[4], grad_y[4];
};

inline Taps MakeTaps(int64_t y, int64_t x, float fx, float fy, int64_t h, int64_t w) {
  Taps t;
  const float sx = static_cast<float>(x) + fx;
  const float sy = static_cast<float>(y) + fy;
  const float x0 = std::floor(sx), y0 = std::floor(sy);
  const float wx1 = sx - x0, wy1 = sy - y0;
  int n = 0;
  for (int dy = 0; dy < 2; ++dy) {
    const float wy = dy ? wy1 : 1.0f - wy1;
    const float yi = y0 + dy;
    for (int dx = 0; dx < 2; ++dx, ++n) {
      const float wx = dx ? wx1 : 1.0f - wx1;
      const float xi = x0 + dx;
      // False for NaN coordinates too: a diverged flow reads nothing.
      const bool valid = xi >= 0 && xi <= w - 1 && yi >= 0 && yi <= h - 1;
      t.index[n] = valid ? static_cast<int64_t>(yi) * w + static_cast<int64_t>(xi) : 0;
      t.weight[n] = valid ? wx * wy : 0.0f;
      t.grad_x[n] = valid ? (2 * dx - 1) * wy : 0.0f;
      t.grad_y[n] = valid ? (2 * dy - 1) * wx : 0.0f;
    }
  }
  return t;
}

// Calls body(s, taps, img) for every sample s = ((b * H + y) * W + x) * K + k,
// the rows (b, y) split over the threads; img is batch item b's image.
template <typename T, typename F>
void ForEachSample(const T* image, const T* flow, const Dims& d, F&& body) {
  const int64_t rows = d.b * d.h;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t y = r % d.h;
    const T* img = image + (r / d.h) * d.h * d.w * d.c;
    for (int64_t x = 0; x < d.w; ++x) {
      for (int64_t k = 0; k < d.k; ++k) {
        const int64_t s = (r * d.w + x) * d.k + k;
        body(s, MakeTaps(y, x, Load(flow, 2 * s), Load(flow, 2 * s + 1), d.h, d.w), img);
      }
    }
  }
}

template <typename T>
void Forward(const T* image, const T* flow, T* out, const Dims& d) {
  ForEachSample(image, flow, d, [&](int64_t s, const Taps& t, const T* img) {
    const T* __restrict s0 = img + t.index[0] * d.c;
    const T* __restrict s1 = img + t.index[1] * d.c;
    const T* __restrict s2 = img + t.index[2] * d.c;
    const T* __restrict s3 = img + t.index[3] * d.c;
    const float w0 = t.weight[0], w1 = t.weight[1], w2 = t.weight[2], w3 = t.weight[3];
    T* __restrict dst = out + s * d.c;
    for (int64_t ch = 0; ch < d.c; ++ch)
      Store(dst, ch, ((Load(s0, ch) * w0 + Load(s1, ch) * w1) + Load(s2, ch) * w2) +
                         Load(s3, ch) * w3);
  });
}

template <typename T>
void Backward(const T* image, const T* flow, const T* d_out, float* d_image, float* d_flow,
              const Dims& d) {
  // The flow gradient: <d_out, tap value> over channels, per tap.
  ForEachSample(image, flow, d, [&](int64_t s, const Taps& t, const T* img) {
    const T* __restrict g = d_out + s * d.c;
    const T* __restrict s0 = img + t.index[0] * d.c;
    const T* __restrict s1 = img + t.index[1] * d.c;
    const T* __restrict s2 = img + t.index[2] * d.c;
    const T* __restrict s3 = img + t.index[3] * d.c;
    float p0 = 0.0f, p1 = 0.0f, p2 = 0.0f, p3 = 0.0f;
    for (int64_t ch = 0; ch < d.c; ++ch) {
      const float gc = Load(g, ch);
      p0 += gc * Load(s0, ch);
      p1 += gc * Load(s1, ch);
      p2 += gc * Load(s2, ch);
      p3 += gc * Load(s3, ch);
    }
    d_flow[2 * s] = t.grad_x[0] * p0 + t.grad_x[1] * p1 + t.grad_x[2] * p2 + t.grad_x[3] * p3;
    d_flow[2 * s + 1] = t.grad_y[0] * p0 + t.grad_y[1] * p1 + t.grad_y[2] * p2 + t.grad_y[3] * p3;
  });
  // The image gradient: each sample's d_out times its tap weights, added
  // into the four source pixels. Threads own disjoint (batch item, channel
  // block) pairs; enough blocks that every thread has work.
  const int threads = omp_get_max_threads();
  int64_t blocks = std::max<int64_t>(1, (threads + d.b - 1) / d.b);
  blocks = std::min<int64_t>(blocks, std::max<int64_t>(1, d.c / 8));
  const int64_t width = (d.c + blocks - 1) / blocks;
  std::memset(d_image, 0, sizeof(float) * d.b * d.h * d.w * d.c);
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < d.b * blocks; ++task) {
    const int64_t bi = task / blocks;
    const int64_t c0 = (task % blocks) * width, c1 = std::min(d.c, c0 + width);
    float* dimg = d_image + bi * d.h * d.w * d.c;
    for (int64_t y = 0; y < d.h; ++y) {
      for (int64_t x = 0; x < d.w; ++x) {
        for (int64_t k = 0; k < d.k; ++k) {
          const int64_t s = (((bi * d.h + y) * d.w + x) * d.k + k);
          const Taps t = MakeTaps(y, x, Load(flow, 2 * s), Load(flow, 2 * s + 1), d.h, d.w);
          const T* g = d_out + s * d.c;
          for (int n = 0; n < 4; ++n) {
            const float wt = t.weight[n];
            if (wt == 0.0f) continue;
            float* __restrict dst = dimg + t.index[n] * d.c;
            for (int64_t ch = c0; ch < c1; ++ch) dst[ch] += Load(g, ch) * wt;
          }
        }
      }
    }
  }
}

ffi::Error ParseDims(const ffi::AnyBuffer& image, const ffi::AnyBuffer& flow, Dims* d) {
  auto i = image.dimensions();
  auto f = flow.dimensions();
  if (i.size() != 4 || f.size() != 5 || f[4] != 2 || f[0] != i[0] || f[1] != i[1] ||
      f[2] != i[2])
    return ffi::Error::InvalidArgument(
        "warp: image must be [B, H, W, C] and flow [B, H, W, K, 2]");
  if (image.element_type() != flow.element_type() ||
      (image.element_type() != ffi::DataType::F32 && image.element_type() != ffi::DataType::BF16))
    return ffi::Error::InvalidArgument("warp: image and flow must both be float32 or bfloat16");
  *d = Dims{i[0], i[1], i[2], f[3], i[3]};
  return ffi::Error::Success();
}

ffi::Error WarpFwdImpl(ffi::AnyBuffer image, ffi::AnyBuffer flow,
                       ffi::Result<ffi::AnyBuffer> out) {
  Dims d;
  if (auto err = ParseDims(image, flow, &d); err.failure()) return err;
  if (out->element_type() != image.element_type())
    return ffi::Error::InvalidArgument("warp: out must have the image's dtype");
  std::lock_guard<std::mutex> lock(Cores());
  if (image.element_type() == ffi::DataType::F32)
    Forward(static_cast<const float*>(image.untyped_data()),
            static_cast<const float*>(flow.untyped_data()),
            static_cast<float*>(out->untyped_data()), d);
  else
    Forward(static_cast<const uint16_t*>(image.untyped_data()),
            static_cast<const uint16_t*>(flow.untyped_data()),
            static_cast<uint16_t*>(out->untyped_data()), d);
  return ffi::Error::Success();
}

ffi::Error WarpBwdImpl(ffi::AnyBuffer image, ffi::AnyBuffer flow, ffi::AnyBuffer d_out,
                       ffi::Result<ffi::AnyBuffer> d_image, ffi::Result<ffi::AnyBuffer> d_flow) {
  Dims d;
  if (auto err = ParseDims(image, flow, &d); err.failure()) return err;
  if (d_out.element_type() != image.element_type() ||
      d_image->element_type() != ffi::DataType::F32 ||
      d_flow->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument(
        "warp: d_out must have the image's dtype, d_image and d_flow float32");
  std::lock_guard<std::mutex> lock(Cores());
  float* di = static_cast<float*>(d_image->untyped_data());
  float* df = static_cast<float*>(d_flow->untyped_data());
  if (image.element_type() == ffi::DataType::F32)
    Backward(static_cast<const float*>(image.untyped_data()),
             static_cast<const float*>(flow.untyped_data()),
             static_cast<const float*>(d_out.untyped_data()), di, df, d);
  else
    Backward(static_cast<const uint16_t*>(image.untyped_data()),
             static_cast<const uint16_t*>(flow.untyped_data()),
             static_cast<const uint16_t*>(d_out.untyped_data()), di, df, d);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsrnnWarpFwd, WarpFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsrnnWarpBwd, WarpBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
