// Sparse CPU kernels for masked fully-connected ReLU networks (LeNet-300-100 and its kin): the cost of a step
// follows the number of surviving weights instead of the dense layer sizes.
//
//   LotterySparseMlpSteps    S steps of minibatch Adam training (one learning rate per step), softmax
//                            cross-entropy loss; returns the updated weights, biases and Adam moments.
//
// Each layer holds only its surviving weights, in CSR form by input row (row_ptr [in + 1], cols [nnz],
// values [nnz]), and a dense bias. Activations are feature-major ([features][batch]), so every product is an
// AXPY or a dot product over the batch, which the compiler vectorises. Per surviving weight w (i -> j) and
// step: forward out[j] += w * in[i]; backward d_in[i] += w * d_out[j] and d_w = <in[i], d_out[j]> (the weight
// gradient at surviving positions only); Adam updates surviving weights only. The arithmetic is Keras's Adam
// (TensorFlow's ResourceApplyAdam) exactly, up to float summation order. Each op runs on the calling thread.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::OpOutputList;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::InferenceContext;

// One layer's sparse weights (CSR by input row) and dense bias, as raw pointers into tensors.
struct Layer {
  int64_t in = 0, out = 0;
  const int32_t* row_ptr = nullptr;
  const int32_t* cols = nullptr;
  float* w = nullptr;
  float* b = nullptr;
};

// out[j][:] = b[j] + sum over surviving w(i -> j) of w * in[i][:], then ReLU unless this is the output layer.
// kB > 0: the batch size, known at compile time (the inner loops unroll completely); 0: `batch` at run time.
template <int kB>
void ForwardImpl(const Layer& layer, const float* in, float* out, int64_t batch, bool relu) {
  const int64_t B = kB > 0 ? kB : batch;
  for (int64_t j = 0; j < layer.out; ++j) std::fill(out + j * B, out + (j + 1) * B, layer.b[j]);
  for (int64_t i = 0; i < layer.in; ++i) {
    const int32_t first = layer.row_ptr[i], last = layer.row_ptr[i + 1];
    const float* __restrict__ x = in + i * B;
    for (int32_t k = first; k < last; ++k) {
      const float w = layer.w[k];
      float* __restrict__ o = out + static_cast<int64_t>(layer.cols[k]) * B;
      for (int64_t n = 0; n < B; ++n) o[n] += w * x[n];
    }
  }
  if (relu) {
    for (int64_t n = 0; n < layer.out * B; ++n) out[n] = std::max(out[n], 0.0f);
  }
}

template <int kB>
void BackwardImpl(const Layer& layer, const float* in, const float* d_out, int64_t batch, float* d_w, float* d_b,
                  float* d_in) {
  const int64_t B = kB > 0 ? kB : batch;
  for (int64_t j = 0; j < layer.out; ++j) {
    const float* g = d_out + j * B;
    float sum = 0.0f;
    for (int64_t n = 0; n < B; ++n) sum += g[n];
    d_b[j] = sum;
  }
  if (d_in != nullptr) std::fill(d_in, d_in + layer.in * B, 0.0f);
  for (int64_t i = 0; i < layer.in; ++i) {
    const int32_t first = layer.row_ptr[i], last = layer.row_ptr[i + 1];
    const float* __restrict__ x = in + i * B;
    float* __restrict__ dx = d_in == nullptr ? nullptr : d_in + i * B;
    for (int32_t k = first; k < last; ++k) {
      const float* __restrict__ g = d_out + static_cast<int64_t>(layer.cols[k]) * B;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t n = 0; n < B; ++n) dot += x[n] * g[n];
      d_w[k] = dot;
      if (dx != nullptr) {
        const float w = layer.w[k];
        for (int64_t n = 0; n < B; ++n) dx[n] += w * g[n];
      }
    }
  }
  if (d_in != nullptr) {
    for (int64_t n = 0; n < layer.in * B; ++n) d_in[n] = in[n] > 0.0f ? d_in[n] : 0.0f;
  }
}

constexpr int64_t kUnrolledBatch = 60;  // both protocols' batch size

void Forward(const Layer& layer, const float* in, float* out, int64_t batch, bool relu) {
  if (batch == kUnrolledBatch) return ForwardImpl<kUnrolledBatch>(layer, in, out, batch, relu);
  ForwardImpl<0>(layer, in, out, batch, relu);
}

// Gradients of one layer from d_out ([out][batch]) and its input activations in ([in][batch]): d_w at the
// surviving positions, d_b, and, when d_in is given, the gradient of the previous layer's pre-activations
// (through its ReLU: in = relu(z), so dz = d_in where in > 0).
void Backward(const Layer& layer, const float* in, const float* d_out, int64_t batch, float* d_w, float* d_b,
              float* d_in) {
  if (batch == kUnrolledBatch) return BackwardImpl<kUnrolledBatch>(layer, in, d_out, batch, d_w, d_b, d_in);
  BackwardImpl<0>(layer, in, d_out, batch, d_w, d_b, d_in);
}

// d(mean softmax cross-entropy)/d(logits), in place over logits [classes][batch].
void SoftmaxCrossEntropyGrad(float* logits, const int32_t* labels, int64_t classes, int64_t batch) {
  for (int64_t n = 0; n < batch; ++n) {
    float top = logits[n];
    for (int64_t c = 1; c < classes; ++c) top = std::max(top, logits[c * batch + n]);
    float total = 0.0f;
    for (int64_t c = 0; c < classes; ++c) {
      float e = std::exp(logits[c * batch + n] - top);
      logits[c * batch + n] = e;
      total += e;
    }
    for (int64_t c = 0; c < classes; ++c) {
      float p = logits[c * batch + n] / total;
      logits[c * batch + n] = (p - (c == labels[n] ? 1.0f : 0.0f)) / static_cast<float>(batch);
    }
  }
}

void Adam(float* w, float* m, float* v, const float* g, int64_t n, float alpha, float beta1, float beta2,
          float epsilon) {
  for (int64_t k = 0; k < n; ++k) {
    m[k] += (g[k] - m[k]) * (1.0f - beta1);
    v[k] += (g[k] * g[k] - v[k]) * (1.0f - beta2);
    w[k] -= (m[k] * alpha) / (std::sqrt(v[k]) + epsilon);
  }
}

// Gathers rows `index` of x ([samples][features]) into feature-major [features][count], a tile of features at
// a time so that the rows written stay in the L1 cache.
void GatherTransposed(const float* x, int64_t features, const int32_t* index, int64_t count, float* out) {
  constexpr int64_t kTile = 16;
  for (int64_t f0 = 0; f0 < features; f0 += kTile) {
    const int64_t f1 = std::min(features, f0 + kTile);
    for (int64_t n = 0; n < count; ++n) {
      const float* row = x + static_cast<int64_t>(index[n]) * features;
      for (int64_t f = f0; f < f1; ++f) out[f * count + n] = row[f];
    }
  }
}

// Asks the memory system for rows `index` of x ([samples][features]) ahead of their use: a batch's rows are
// scattered over the training set, and loading them on demand costs more than a sparse step's arithmetic.
void PrefetchRows(const float* x, int64_t features, const int32_t* index, int64_t count) {
  constexpr int64_t kLine = 64 / sizeof(float);
  for (int64_t n = 0; n < count; ++n) {
    const float* row = x + static_cast<int64_t>(index[n]) * features;
    for (int64_t f = 0; f < features; f += kLine) __builtin_prefetch(row + f, 0, 3);
  }
}

// Validates the CSR lists against each other and against the input width; fills `layers` (weights and biases
// point into the given tensors, which the caller owns).
Status ReadLayers(const OpInputList& row_ptr, const OpInputList& cols, const std::vector<Tensor*>& values,
                  const std::vector<Tensor*>& bias, int64_t features, std::vector<Layer>* layers) {
  int64_t width = features;
  for (int l = 0; l < row_ptr.size(); ++l) {
    Layer layer;
    layer.in = width;
    layer.out = bias[l]->NumElements();
    if (row_ptr[l].NumElements() != layer.in + 1) {
      return InvalidArgument("layer ", l, ": row_ptr must hold its ", layer.in, " input rows, plus one");
    }
    const int64_t nnz = cols[l].NumElements();
    if (values[l]->NumElements() != nnz) {
      return InvalidArgument("layer ", l, ": ", values[l]->NumElements(), " values for ", nnz, " columns");
    }
    layer.row_ptr = row_ptr[l].flat<int32_t>().data();
    layer.cols = cols[l].flat<int32_t>().data();
    if (layer.row_ptr[0] != 0 || layer.row_ptr[layer.in] != nnz) {
      return InvalidArgument("layer ", l, ": row_ptr must run from 0 to the number of surviving weights");
    }
    for (int64_t i = 0; i < layer.in; ++i) {
      if (layer.row_ptr[i + 1] < layer.row_ptr[i]) return InvalidArgument("layer ", l, ": row_ptr decreases");
    }
    for (int64_t k = 0; k < nnz; ++k) {
      if (layer.cols[k] < 0 || layer.cols[k] >= layer.out) {
        return InvalidArgument("layer ", l, ": column ", layer.cols[k], " outside 0..", layer.out - 1);
      }
    }
    layer.w = values[l]->flat<float>().data();
    layer.b = bias[l]->flat<float>().data();
    layers->push_back(layer);
    width = layer.out;
  }
  return Status();
}

class SparseMlpStepsOp : public OpKernel {
 public:
  explicit SparseMlpStepsOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("beta1", &beta1_));
    OP_REQUIRES_OK(context, context->GetAttr("beta2", &beta2_));
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& labels = context->input(1);
    const Tensor& batches = context->input(2);
    OP_REQUIRES(context, context->input(3).NumElements() == 1, InvalidArgument("step0 must be a scalar"));
    const int64_t step0 = context->input(3).flat<int64_t>()(0);
    OP_REQUIRES(context, x.dims() == 2 && labels.dims() == 1 && labels.dim_size(0) == x.dim_size(0),
                InvalidArgument("x must be [samples, features] and labels [samples]"));
    OP_REQUIRES(context, batches.dims() == 2 && batches.dim_size(1) > 0,
                InvalidArgument("batches must be [steps, batch size]"));
    OP_REQUIRES(context, context->input(4).dims() == 1 && context->input(4).dim_size(0) == batches.dim_size(0),
                InvalidArgument("learning_rates must hold one rate per step"));
    const float* learning_rates = context->input(4).flat<float>().data();
    OpInputList row_ptr, cols, values_in, bias_in, m_w_in, v_w_in, m_b_in, v_b_in;
    OP_REQUIRES_OK(context, context->input_list("row_ptr", &row_ptr));
    OP_REQUIRES_OK(context, context->input_list("cols", &cols));
    OP_REQUIRES_OK(context, context->input_list("values", &values_in));
    OP_REQUIRES_OK(context, context->input_list("bias", &bias_in));
    OP_REQUIRES_OK(context, context->input_list("m_values", &m_w_in));
    OP_REQUIRES_OK(context, context->input_list("v_values", &v_w_in));
    OP_REQUIRES_OK(context, context->input_list("m_bias", &m_b_in));
    OP_REQUIRES_OK(context, context->input_list("v_bias", &v_b_in));
    const int num_layers = row_ptr.size();

    // The outputs start as copies of the state and are updated in place.
    std::vector<Tensor*> w(num_layers), b(num_layers), m_w(num_layers), v_w(num_layers), m_b(num_layers),
        v_b(num_layers);
    const std::vector<std::pair<const OpInputList*, std::vector<Tensor*>*>> state = {
        {&values_in, &w}, {&bias_in, &b}, {&m_w_in, &m_w}, {&v_w_in, &v_w}, {&m_b_in, &m_b}, {&v_b_in, &v_b}};
    const char* names[] = {"new_values", "new_bias", "new_m_values", "new_v_values", "new_m_bias", "new_v_bias"};
    for (size_t s = 0; s < state.size(); ++s) {
      OpOutputList outputs;
      OP_REQUIRES_OK(context, context->output_list(names[s], &outputs));
      for (int l = 0; l < num_layers; ++l) {
        const Tensor& source = (*state[s].first)[l];
        Tensor* target = nullptr;
        OP_REQUIRES_OK(context, outputs.allocate(l, source.shape(), &target));
        if (source.NumElements() > 0) {  // a layer may have no surviving weight
          std::memcpy(target->flat<float>().data(), source.flat<float>().data(),
                      source.NumElements() * sizeof(float));
        }
        (*state[s].second)[l] = target;
      }
    }
    for (int l = 0; l < num_layers; ++l) {
      OP_REQUIRES(context, m_w[l]->NumElements() == w[l]->NumElements() &&
                               v_w[l]->NumElements() == w[l]->NumElements() &&
                               m_b[l]->NumElements() == b[l]->NumElements() &&
                               v_b[l]->NumElements() == b[l]->NumElements(),
                  InvalidArgument("layer ", l, ": Adam moments must match the weights and biases"));
    }
    std::vector<Layer> layers;
    OP_REQUIRES_OK(context, ReadLayers(row_ptr, cols, w, b, x.dim_size(1), &layers));

    const int64_t samples = x.dim_size(0), features = x.dim_size(1);
    const int64_t steps = batches.dim_size(0), batch = batches.dim_size(1);
    const int64_t classes = layers.back().out;
    const int32_t* index = batches.flat<int32_t>().data();
    const int32_t* all_labels = labels.flat<int32_t>().data();
    for (int64_t n = 0; n < steps * batch; ++n) {
      OP_REQUIRES(context, index[n] >= 0 && index[n] < samples,
                  InvalidArgument("batch index ", index[n], " outside 0..", samples - 1));
    }
    for (int64_t n = 0; n < samples; ++n) {
      OP_REQUIRES(context, all_labels[n] >= 0 && all_labels[n] < classes,
                  InvalidArgument("label ", all_labels[n], " outside 0..", classes - 1));
    }

    // activations[0] is the batch's input; activations[l + 1] layer l's output (logits for the last).
    std::vector<std::vector<float>> activations(num_layers + 1), grads(num_layers + 1), d_w(num_layers),
        d_b(num_layers);
    activations[0].resize(features * batch);
    for (int l = 0; l < num_layers; ++l) {
      activations[l + 1].resize(layers[l].out * batch);
      grads[l + 1].resize(layers[l].out * batch);
      d_w[l].resize(w[l]->NumElements());
      d_b[l].resize(layers[l].out);
    }
    grads[0].resize(features * batch);
    std::vector<int32_t> batch_labels(batch);
    for (int64_t s = 0; s < steps; ++s) {
      const int32_t* rows = index + s * batch;
      GatherTransposed(x.flat<float>().data(), features, rows, batch, activations[0].data());
      if (s + 1 < steps) PrefetchRows(x.flat<float>().data(), features, rows + batch, batch);
      for (int64_t n = 0; n < batch; ++n) batch_labels[n] = all_labels[rows[n]];
      for (int l = 0; l < num_layers; ++l) {
        Forward(layers[l], activations[l].data(), activations[l + 1].data(), batch, l + 1 < num_layers);
      }
      std::vector<float>& top = grads[num_layers];
      std::copy(activations[num_layers].begin(), activations[num_layers].end(), top.begin());
      SoftmaxCrossEntropyGrad(top.data(), batch_labels.data(), classes, batch);
      for (int l = num_layers - 1; l >= 0; --l) {
        Backward(layers[l], activations[l].data(), grads[l + 1].data(), batch, d_w[l].data(), d_b[l].data(),
                    l > 0 ? grads[l].data() : nullptr);
      }
      const float t = static_cast<float>(step0 + s + 1);
      const float alpha = learning_rates[s] * std::sqrt(1.0f - std::pow(beta2_, t)) / (1.0f - std::pow(beta1_, t));
      for (int l = 0; l < num_layers; ++l) {
        Adam(layers[l].w, m_w[l]->flat<float>().data(), v_w[l]->flat<float>().data(), d_w[l].data(),
             w[l]->NumElements(), alpha, beta1_, beta2_, epsilon_);
        Adam(layers[l].b, m_b[l]->flat<float>().data(), v_b[l]->flat<float>().data(), d_b[l].data(),
             b[l]->NumElements(), alpha, beta1_, beta2_, epsilon_);
      }
    }
  }

 private:
  float beta1_, beta2_, epsilon_;
};

Status SameShapes(InferenceContext* c, int first_input, int count, int first_output) {
  for (int i = 0; i < count; ++i) c->set_output(first_output + i, c->input(first_input + i));
  return Status();
}

}  // namespace

REGISTER_OP("LotterySparseMlpSteps")
    .Input("x: float")
    .Input("labels: int32")
    .Input("batches: int32")
    .Input("step0: int64")
    .Input("learning_rates: float")
    .Input("row_ptr: L * int32")
    .Input("cols: L * int32")
    .Input("values: L * float")
    .Input("bias: L * float")
    .Input("m_values: L * float")
    .Input("v_values: L * float")
    .Input("m_bias: L * float")
    .Input("v_bias: L * float")
    .Attr("L: int >= 1")
    .Attr("beta1: float = 0.9")
    .Attr("beta2: float = 0.999")
    .Attr("epsilon: float = 1e-7")
    .Output("new_values: L * float")
    .Output("new_bias: L * float")
    .Output("new_m_values: L * float")
    .Output("new_v_values: L * float")
    .Output("new_m_bias: L * float")
    .Output("new_v_bias: L * float")
    .SetShapeFn([](InferenceContext* c) {
      int64_t num_layers;
      TF_RETURN_IF_ERROR(c->GetAttr("L", &num_layers));
      const int state = 5 + 2 * num_layers;  // values, bias, m_values, v_values, m_bias, v_bias follow
      TF_RETURN_IF_ERROR(SameShapes(c, state, num_layers, 0));
      TF_RETURN_IF_ERROR(SameShapes(c, state + num_layers, num_layers, num_layers));
      TF_RETURN_IF_ERROR(SameShapes(c, state + 2 * num_layers, num_layers, 2 * num_layers));
      TF_RETURN_IF_ERROR(SameShapes(c, state + 3 * num_layers, num_layers, 3 * num_layers));
      TF_RETURN_IF_ERROR(SameShapes(c, state + 4 * num_layers, num_layers, 4 * num_layers));
      return SameShapes(c, state + 5 * num_layers, num_layers, 5 * num_layers);
    });

REGISTER_KERNEL_BUILDER(Name("LotterySparseMlpSteps").Device(DEVICE_CPU), SparseMlpStepsOp);
