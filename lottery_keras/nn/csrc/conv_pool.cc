// Fused CPU kernels for "stride-1 convolution -> bias -> ReLU -> 2x2 max-pool (stride 2)", the block LeNet-5 is
// built from. The convolution's forward pass stays TensorFlow's (oneDNN); these ops replace everything after it:
//
//   LotteryBiasReluMaxPool      z (conv output), bias -> pooled output, and which position of its 2x2 window each
//                               output came from (-1 where ReLU zeroed it, so no gradient flows);
//   LotteryConvPoolFilterGrad   x, windows, d(pooled) -> d(kernel), d(bias);
//   LotteryConvPoolInputGrad    kernel, windows, d(pooled), x's shape -> d(x).
//
// The backward ops use that at most one conv output in four (the window's maximum, if positive) receives a
// gradient: they scatter from those positions only, instead of running TensorFlow's dense max-pool, ReLU, bias
// and convolution gradients over every position. Tensors are NHWC and kernels HWIO, as in TensorFlow. Each op
// runs on the calling thread: the toolkit gets its parallelism from batch shards (lottery_keras/train/plan.py).
#include <algorithm>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Geometry of one stride-1 convolution followed by a 2x2, stride-2, VALID max-pool.
struct Geometry {
  int64_t batch, in_h, in_w, in_c, k, out_c;
  int64_t pad_top, pad_left, conv_h, conv_w, pool_h, pool_w;

  Geometry(int64_t batch, int64_t in_h, int64_t in_w, int64_t in_c, int64_t k, int64_t out_c, bool same)
      : batch(batch), in_h(in_h), in_w(in_w), in_c(in_c), k(k), out_c(out_c) {
    pad_top = pad_left = same ? (k - 1) / 2 : 0;  // TensorFlow's SAME puts the odd pixel at the end
    conv_h = same ? in_h : in_h - k + 1;
    conv_w = same ? in_w : in_w - k + 1;
    pool_h = conv_h / 2;
    pool_w = conv_w / 2;
  }
  // The input as the convolution sees it, zero padding included: every kernel window lies inside.
  int64_t padded_h() const { return conv_h + k - 1; }
  int64_t padded_w() const { return conv_w + k - 1; }
  // One kernel row: k pixels of in_c channels, contiguous in NHWC.
  int64_t run() const { return k * in_c; }
  // A kernel row rounded up to whole 8-float vectors. The backward ops update `span` floats per kernel row,
  // the extra ones reading past the row (and adding zeros, or filling scratch columns that are dropped), so the
  // inner loop is a fixed number of full vector operations.
  int64_t span() const { return (run() + 7) / 8 * 8; }
  // The padded input's size, with room for the last row's span.
  int64_t padded_size() const { return batch * padded_h() * padded_w() * in_c + span() - run(); }
};

// Sizes known at compile time make the short inner loops below straight-line vector code; 0 means "read the
// runtime value". Dispatch instantiates LeNet-5's sizes (pooled channels 6 and 16, kernel-row spans 8 and 32)
// and falls back to the runtime size for other networks.
template <int kFixed>
inline int64_t Size(int64_t runtime) {
  return kFixed > 0 ? kFixed : runtime;
}

template <template <int> class Impl, typename... Args>
void Dispatch(int64_t size, Args&&... args) {
  switch (size) {
    case 6: return Impl<6>::Run(args...);
    case 8: return Impl<8>::Run(args...);
    case 16: return Impl<16>::Run(args...);
    case 32: return Impl<32>::Run(args...);
    default: return Impl<0>::Run(args...);
  }
}

template <int kSpan>
inline void AddScaled(float scale, const float* __restrict src, float* __restrict dst, int64_t span) {
  for (int64_t t = 0; t < Size<kSpan>(span); ++t) dst[t] += scale * src[t];
}

// Calls visit(n, row, col, channel, gradient) for every conv output that receives a gradient, where (row, col)
// is its conv-output position. `window` holds, per pooled output, which of its 2x2 window's positions (0-3, row
// major) was the maximum, or -1.
template <typename Visit>
void ForEachRoutedGradient(const Geometry& g, const int32_t* window, const float* d_pooled, Visit visit) {
  int64_t cell = 0;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t i = 0; i < g.pool_h; ++i) {
      for (int64_t j = 0; j < g.pool_w; ++j) {
        for (int64_t ch = 0; ch < g.out_c; ++ch, ++cell) {
          const int32_t winner = window[cell];
          if (winner >= 0) visit(n, 2 * i + (winner >> 1), 2 * j + (winner & 1), ch, d_pooled[cell]);
        }
      }
    }
  }
}

template <int kChannels>
struct PoolForward {
  static void Run(const float* __restrict z, const float* __restrict bias, float* __restrict y,
                  int32_t* __restrict window, int64_t batch, int64_t h, int64_t w, int64_t channels) {
    const int64_t c = Size<kChannels>(channels);
    for (int64_t n = 0; n < batch; ++n) {
      for (int64_t i = 0; i < h / 2; ++i) {
        const float* top = z + (n * h + 2 * i) * w * c;
        const float* bottom = top + w * c;
        for (int64_t j = 0; j < w / 2; ++j, y += c, window += c) {
          const float* z0 = top + 2 * j * c;
          const float* z2 = bottom + 2 * j * c;
          for (int64_t ch = 0; ch < c; ++ch) {
            // Bias first, as TensorFlow adds it before pooling. Ties go to the first position in row-major
            // order, as in TensorFlow's max-pool gradient. Every choice is a float select, which compilers
            // vectorize; integer selects here became branches that random data mispredicts.
            const float v0 = z0[ch] + bias[ch], v1 = z0[c + ch] + bias[ch];
            const float v2 = z2[ch] + bias[ch], v3 = z2[c + ch] + bias[ch];
            const float top_max = v1 > v0 ? v1 : v0, bottom_max = v3 > v2 ? v3 : v2;
            const float top_at = v1 > v0 ? 1.0f : 0.0f, bottom_at = v3 > v2 ? 3.0f : 2.0f;
            const float best = bottom_max > top_max ? bottom_max : top_max;
            const float at = bottom_max > top_max ? bottom_at : top_at;
            y[ch] = best > 0.0f ? best : 0.0f;
            window[ch] = static_cast<int32_t>(best > 0.0f ? at : -1.0f);  // no gradient through ReLU's zeros
          }
        }
      }
    }
  }
};

// d(kernel) accumulated as [out_c][k][span]: a kernel row of one output channel is contiguous, like the input
// row it is multiplied with (the span's extra columns are scratch).
template <int kSpan>
struct FilterGrad {
  static void Run(const Geometry& g, const float* x_padded, const int32_t* window, const float* d_pooled,
                  float* dk, float* d_bias) {
    const int64_t span = Size<kSpan>(g.span());
    const int64_t row_stride = g.padded_w() * g.in_c;
    ForEachRoutedGradient(g, window, d_pooled, [&](int64_t n, int64_t row, int64_t col, int64_t ch, float grad) {
      d_bias[ch] += grad;
      const float* src = x_padded + ((n * g.padded_h() + row) * g.padded_w() + col) * g.in_c;
      float* dst = dk + ch * g.k * span;
      for (int64_t p = 0; p < g.k; ++p) AddScaled<kSpan>(grad, src + p * row_stride, dst + p * span, span);
    });
  }
};

// d(x) scattered into the padded input, from the kernel stored as [out_c][k][span] (zeros past each row).
template <int kSpan>
struct InputGrad {
  static void Run(const Geometry& g, const float* kt, const int32_t* window, const float* d_pooled,
                  float* dx_padded) {
    const int64_t span = Size<kSpan>(g.span());
    const int64_t row_stride = g.padded_w() * g.in_c;
    ForEachRoutedGradient(g, window, d_pooled, [&](int64_t n, int64_t row, int64_t col, int64_t ch, float grad) {
      float* dst = dx_padded + ((n * g.padded_h() + row) * g.padded_w() + col) * g.in_c;
      const float* src = kt + ch * g.k * span;
      for (int64_t p = 0; p < g.k; ++p) AddScaled<kSpan>(grad, src + p * span, dst + p * row_stride, span);
    });
  }
};

// Offset of input pixel (n, r, 0) in the padded buffer.
int64_t PaddedRow(const Geometry& g, int64_t n, int64_t r) {
  return ((n * g.padded_h() + r + g.pad_top) * g.padded_w() + g.pad_left) * g.in_c;
}

// `x` in the interior of a zeroed buffer of `padded_size()`: the input as the convolution sees it.
std::vector<float> PaddedInput(const Geometry& g, const float* x) {
  std::vector<float> padded(g.padded_size(), 0.0f);
  const int64_t row = g.in_w * g.in_c;
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t r = 0; r < g.in_h; ++r) std::copy_n(x + (n * g.in_h + r) * row, row, &padded[PaddedRow(g, n, r)]);
  return padded;
}

bool IsSame(OpKernelConstruction* context) {
  std::string padding;
  context->GetAttr("padding", &padding).IgnoreError();  // the op's attr type allows only SAME or VALID
  return padding == "SAME";
}

class BiasReluMaxPoolOp : public OpKernel {
 public:
  explicit BiasReluMaxPoolOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& z = context->input(0);
    const Tensor& bias = context->input(1);
    OP_REQUIRES(context, z.dims() == 4, InvalidArgument("z must be NHWC, got shape ", z.shape().DebugString()));
    OP_REQUIRES(context, bias.dims() == 1 && bias.dim_size(0) == z.dim_size(3),
                InvalidArgument("bias must have one value per channel of z"));
    const int64_t batch = z.dim_size(0), h = z.dim_size(1), w = z.dim_size(2), c = z.dim_size(3);
    const TensorShape out_shape({batch, h / 2, w / 2, c});
    Tensor* y = nullptr;
    Tensor* window = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, out_shape, &y));
    OP_REQUIRES_OK(context, context->allocate_output(1, out_shape, &window));
    Dispatch<PoolForward>(c, z.flat<float>().data(), bias.flat<float>().data(), y->flat<float>().data(),
                          window->flat<int32_t>().data(), batch, h, w, c);
  }
};

class ConvPoolFilterGradOp : public OpKernel {
 public:
  explicit ConvPoolFilterGradOp(OpKernelConstruction* context) : OpKernel(context), same_(IsSame(context)) {
    OP_REQUIRES_OK(context, context->GetAttr("kernel_size", &kernel_size_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& window = context->input(1);
    const Tensor& d_pooled = context->input(2);
    OP_REQUIRES(context, x.dims() == 4 && d_pooled.dims() == 4 && window.shape() == d_pooled.shape(),
                InvalidArgument("expected NHWC x, and windows and gradients of the pooled output's shape"));
    const Geometry g(x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3), kernel_size_,
                     d_pooled.dim_size(3), same_);
    OP_REQUIRES(context, d_pooled.dim_size(0) == g.batch && d_pooled.dim_size(1) == g.pool_h &&
                             d_pooled.dim_size(2) == g.pool_w,
                InvalidArgument("pooled gradient shape ", d_pooled.shape().DebugString(),
                                " does not match the input ", x.shape().DebugString()));
    Tensor* d_kernel = nullptr;
    Tensor* d_bias = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({g.k, g.k, g.in_c, g.out_c}), &d_kernel));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({g.out_c}), &d_bias));
    float* db = d_bias->flat<float>().data();
    std::fill(db, db + g.out_c, 0.0f);
    const std::vector<float> x_padded = PaddedInput(g, x.flat<float>().data());
    std::vector<float> dk(g.out_c * g.k * g.span(), 0.0f);
    Dispatch<FilterGrad>(g.span(), g, x_padded.data(), window.flat<int32_t>().data(),
                         d_pooled.flat<float>().data(), dk.data(), db);
    float* out = d_kernel->flat<float>().data();  // HWIO: [p][q][c][ch]
    for (int64_t ch = 0; ch < g.out_c; ++ch)
      for (int64_t p = 0; p < g.k; ++p)
        for (int64_t t = 0; t < g.run(); ++t) out[(p * g.run() + t) * g.out_c + ch] = dk[(ch * g.k + p) * g.span() + t];
  }

 private:
  const bool same_;
  int64_t kernel_size_;
};

class ConvPoolInputGradOp : public OpKernel {
 public:
  explicit ConvPoolInputGradOp(OpKernelConstruction* context) : OpKernel(context), same_(IsSame(context)) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& kernel = context->input(0);
    const Tensor& window = context->input(1);
    const Tensor& d_pooled = context->input(2);
    const Tensor& input_sizes = context->input(3);
    OP_REQUIRES(context, kernel.dims() == 4 && kernel.dim_size(0) == kernel.dim_size(1),
                InvalidArgument("kernel must be square HWIO, got ", kernel.shape().DebugString()));
    OP_REQUIRES(context, input_sizes.NumElements() == 4, InvalidArgument("input_sizes must have 4 elements"));
    OP_REQUIRES(context, d_pooled.dims() == 4 && window.shape() == d_pooled.shape(),
                InvalidArgument("windows and gradients must share the pooled output's NHWC shape"));
    const auto sizes = input_sizes.flat<int32_t>();
    OP_REQUIRES(context, sizes(0) > 0 && sizes(1) > 0 && sizes(2) > 0 && sizes(3) > 0,
                InvalidArgument("input_sizes must be positive"));
    const Geometry g(sizes(0), sizes(1), sizes(2), sizes(3), kernel.dim_size(0), kernel.dim_size(3), same_);
    OP_REQUIRES(context, kernel.dim_size(2) == g.in_c && d_pooled.dim_size(3) == g.out_c &&
                             d_pooled.dim_size(0) == g.batch && d_pooled.dim_size(1) == g.pool_h &&
                             d_pooled.dim_size(2) == g.pool_w,
                InvalidArgument("kernel ", kernel.shape().DebugString(), " and pooled gradient ",
                                d_pooled.shape().DebugString(), " do not fit the input size"));
    Tensor* d_x = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, TensorShape({g.batch, g.in_h, g.in_w, g.in_c}), &d_x));
    const float* ks = kernel.flat<float>().data();
    std::vector<float> kt(g.out_c * g.k * g.span(), 0.0f);  // [out_c][k][span]
    for (int64_t ch = 0; ch < g.out_c; ++ch)
      for (int64_t p = 0; p < g.k; ++p)
        for (int64_t t = 0; t < g.run(); ++t) kt[(ch * g.k + p) * g.span() + t] = ks[(p * g.run() + t) * g.out_c + ch];
    std::vector<float> dx_padded(g.padded_size(), 0.0f);
    Dispatch<InputGrad>(g.span(), g, kt.data(), window.flat<int32_t>().data(), d_pooled.flat<float>().data(),
                        dx_padded.data());
    float* dx = d_x->flat<float>().data();
    const int64_t row = g.in_w * g.in_c;
    for (int64_t n = 0; n < g.batch; ++n)
      for (int64_t r = 0; r < g.in_h; ++r)
        std::copy_n(&dx_padded[PaddedRow(g, n, r)], row, dx + (n * g.in_h + r) * row);
  }

 private:
  const bool same_;
};

}  // namespace

REGISTER_OP("LotteryBiasReluMaxPool")
    .Input("z: float")
    .Input("bias: float")
    .Output("pooled: float")
    .Output("window: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle z;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &z));
      DimensionHandle h, w;
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(z, 1), 2, /*evenly_divisible=*/false, &h));
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(z, 2), 2, /*evenly_divisible=*/false, &w));
      ShapeHandle out = c->MakeShape({c->Dim(z, 0), h, w, c->Dim(z, 3)});
      c->set_output(0, out);
      c->set_output(1, out);
      return absl::OkStatus();
    });

REGISTER_OP("LotteryConvPoolFilterGrad")
    .Input("x: float")
    .Input("window: int32")
    .Input("d_pooled: float")
    .Attr("kernel_size: int >= 1")
    .Attr("padding: {'SAME', 'VALID'}")
    .Output("d_kernel: float")
    .Output("d_bias: float")
    .SetShapeFn([](InferenceContext* c) {
      int64_t k;
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", &k));
      ShapeHandle x, d;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &d));
      c->set_output(0, c->MakeShape({k, k, c->Dim(x, 3), c->Dim(d, 3)}));
      c->set_output(1, c->MakeShape({c->Dim(d, 3)}));
      return absl::OkStatus();
    });

REGISTER_OP("LotteryConvPoolInputGrad")
    .Input("kernel: float")
    .Input("window: int32")
    .Input("d_pooled: float")
    .Input("input_sizes: int32")
    .Attr("padding: {'SAME', 'VALID'}")
    .Output("d_x: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(3, &out));
      TF_RETURN_IF_ERROR(c->WithRank(out, 4, &out));
      c->set_output(0, out);
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("LotteryBiasReluMaxPool").Device(DEVICE_CPU), BiasReluMaxPoolOp);
REGISTER_KERNEL_BUILDER(Name("LotteryConvPoolFilterGrad").Device(DEVICE_CPU), ConvPoolFilterGradOp);
REGISTER_KERNEL_BUILDER(Name("LotteryConvPoolInputGrad").Device(DEVICE_CPU).HostMemory("input_sizes"),
                        ConvPoolInputGradOp);
