// dnas's CPU kernels for channels-last float32 maps with few channels: training-mode BatchNorm and the
// 3x3 window sum of NB201's average pool, each with its autograd in C++ (bottom of the file).
//
// A channels-last (N, C, H, W) tensor is a (rows, C) matrix with rows = N*H*W. ATen's channels-last
// kernels loop over rows and vectorise over C; at C = 16 a row is one AVX-512 register, so they spend
// most of their time on per-row loop overhead (8-16x a copy at 64x16x32x32). Here the channel count is
// a template parameter for the widths the supernets use (16, 32, 64, ...), so the inner loop over C is
// fully unrolled and the per-channel sums stay in registers while rows stream by.
//
// Reductions run over fixed row chunks (the chunking depends on the row count only), each summed in
// float from a per-channel shift (the first row) and combined in double: the result does not depend on
// the number of threads. Loaded by dnas/supernet/native.py (torch.utils.cpp_extension).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kChunkRows = 256;

int64_t chunk_count(int64_t rows) { return (rows + kChunkRows - 1) / kChunkRows; }

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              name, " must be a 4-D channels-last float32 CPU tensor");
}

void check_vector(const at::Tensor& v, int64_t c, const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.numel() == c && v.is_contiguous() && v.scalar_type() == at::kFloat &&
                  v.device().is_cpu(),
              name, " must be a contiguous float32 CPU vector of ", c, " elements");
}

// Per chunk of rows: two per-channel float sums into out[chunk * 2C + (0..2C)]; term(r, a1, a2) adds row r's
// contributions to both.
template <int64_t C, typename F>
void chunk_sums(int64_t rows, double* __restrict__ out, F&& term) {
  const int64_t chunks = chunk_count(rows);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      float a1[C], a2[C];
      for (int64_t j = 0; j < C; ++j) a1[j] = a2[j] = 0.f;
      const int64_t r1 = std::min(rows, (ch + 1) * kChunkRows);
      for (int64_t r = ch * kChunkRows; r < r1; ++r) term(r, a1, a2);
      double* o = out + ch * 2 * C;
      for (int64_t j = 0; j < C; ++j) {
        o[j] = a1[j];
        o[C + j] = a2[j];
      }
    }
  });
}

void combine(const double* part, int64_t chunks, int64_t c, double* s1, double* s2) {
  for (int64_t j = 0; j < c; ++j) s1[j] = s2[j] = 0.0;
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int64_t j = 0; j < c; ++j) {
      s1[j] += part[ch * 2 * c + j];
      s2[j] += part[ch * 2 * c + c + j];
    }
}

template <int64_t C>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& weight,
                                                            const at::Tensor& bias, const at::Tensor& running_mean,
                                                            const at::Tensor& running_var, double momentum,
                                                            double eps) {
  const int64_t rows = x.numel() / C, chunks = chunk_count(rows);
  const float* xp = x.data_ptr<float>();
  std::vector<double> part(chunks * 2 * C), s1(C), s2(C);
  float shift[C];
  for (int64_t j = 0; j < C; ++j) shift[j] = xp[j];
  chunk_sums<C>(rows, part.data(), [&](int64_t r, float* a1, float* a2) {
    const float* __restrict__ row = xp + r * C;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      const float d = row[j] - shift[j];
      a1[j] += d;
      a2[j] += d * d;
    }
  });
  combine(part.data(), chunks, C, s1.data(), s2.data());

  at::Tensor mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options());
  float* mp = mean.data_ptr<float>();
  float* ip = invstd.data_ptr<float>();
  float scale[C], offset[C];
  const float* wp = weight.defined() ? weight.data_ptr<float>() : nullptr;
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const double n = static_cast<double>(rows);
  for (int64_t j = 0; j < C; ++j) {
    const double m = s1[j] / n;
    const double var = std::max(0.0, s2[j] / n - m * m);
    const double mu = shift[j] + m;
    const double is = 1.0 / std::sqrt(var + eps);
    mp[j] = static_cast<float>(mu);
    ip[j] = static_cast<float>(is);
    const double w = wp ? wp[j] : 1.0;
    scale[j] = static_cast<float>(is * w);
    offset[j] = static_cast<float>((bp ? bp[j] : 0.0) - mu * is * w);
    if (running_mean.defined()) {
      float* rm = running_mean.data_ptr<float>();
      float* rv = running_var.data_ptr<float>();
      rm[j] = static_cast<float>((1.0 - momentum) * rm[j] + momentum * mu);
      rv[j] = static_cast<float>((1.0 - momentum) * rv[j] + momentum * var * n / std::max(n - 1.0, 1.0));
    }
  }

  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 2048, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ xr = xp + r * C;
      float* __restrict__ yr = yp + r * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) yr[j] = xr[j] * scale[j] + offset[j];
    }
  });
  return {y, mean, invstd};
}

template <int64_t C>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& weight, const at::Tensor& mean,
                                                             const at::Tensor& invstd, bool need_input,
                                                             bool need_weight, bool need_bias) {
  const int64_t rows = x.numel() / C, chunks = chunk_count(rows);
  const float* xp = x.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  float mu[C], is[C];
  for (int64_t j = 0; j < C; ++j) {
    mu[j] = mean.data_ptr<float>()[j];
    is[j] = invstd.data_ptr<float>()[j];
  }
  std::vector<double> part(chunks * 2 * C), sum_g(C), sum_gx(C);
  chunk_sums<C>(rows, part.data(), [&](int64_t r, float* a1, float* a2) {
    const float* __restrict__ gr = gp + r * C;
    const float* __restrict__ xr = xp + r * C;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      a1[j] += gr[j];
      a2[j] += gr[j] * (xr[j] - mu[j]);
    }
  });
  combine(part.data(), chunks, C, sum_g.data(), sum_gx.data());

  at::Tensor grad_input, grad_weight, grad_bias;
  if (need_weight) {
    grad_weight = at::empty({C}, x.options());
    for (int64_t j = 0; j < C; ++j) grad_weight.data_ptr<float>()[j] = static_cast<float>(sum_gx[j] * is[j]);
  }
  if (need_bias) {
    grad_bias = at::empty({C}, x.options());
    for (int64_t j = 0; j < C; ++j) grad_bias.data_ptr<float>()[j] = static_cast<float>(sum_g[j]);
  }
  if (need_input) {
    // dx = w * invstd * (g - mean(g) - (x - mu) * invstd^2 * mean(g * (x - mu))) = g * k1 + x * k2 + k3
    const float* wp = weight.defined() ? weight.data_ptr<float>() : nullptr;
    const double n = static_cast<double>(rows);
    float k1[C], k2[C], k3[C];
    for (int64_t j = 0; j < C; ++j) {
      const double a = static_cast<double>(is[j]) * (wp ? wp[j] : 1.0);
      const double b = -a * static_cast<double>(is[j]) * is[j] * sum_gx[j] / n;
      k1[j] = static_cast<float>(a);
      k2[j] = static_cast<float>(b);
      k3[j] = static_cast<float>(-a * sum_g[j] / n - b * mu[j]);
    }
    grad_input = at::empty_like(x, at::MemoryFormat::ChannelsLast);
    float* dp = grad_input.data_ptr<float>();
    at::parallel_for(0, rows, 2048, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* __restrict__ gr = gp + r * C;
        const float* __restrict__ xr = xp + r * C;
        float* __restrict__ dr = dp + r * C;
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) dr[j] = gr[j] * k1[j] + xr[j] * k2[j] + k3[j];
      }
    });
  }
  return {grad_input, grad_weight, grad_bias};
}

#define DNAS_BN_WIDTHS(X) X(4) X(8) X(12) X(16) X(24) X(32) X(48) X(64) X(96) X(128) X(192) X(256)

bool supported_width(int64_t c) {
#define DNAS_CASE(W) if (c == W) return true;
  DNAS_BN_WIDTHS(DNAS_CASE)
#undef DNAS_CASE
  return false;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                          const c10::optional<at::Tensor>& bias,
                                                          const c10::optional<at::Tensor>& running_mean,
                                                          const c10::optional<at::Tensor>& running_var,
                                                          double momentum, double eps) {
  check_input(x, "x");
  const int64_t c = x.size(1);
  TORCH_CHECK(supported_width(c), "unsupported channel count ", c);
  TORCH_CHECK(x.numel() > 0, "x is empty");
  at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  at::Tensor rm = running_mean.value_or(at::Tensor()), rv = running_var.value_or(at::Tensor());
  if (w.defined()) check_vector(w, c, "weight");
  if (b.defined()) check_vector(b, c, "bias");
  TORCH_CHECK(rm.defined() == rv.defined(), "running_mean and running_var go together");
  if (rm.defined()) {
    check_vector(rm, c, "running_mean");
    check_vector(rv, c, "running_var");
  }
#define DNAS_CASE(W) if (c == W) return forward_impl<W>(x, w, b, rm, rv, momentum, eps);
  DNAS_BN_WIDTHS(DNAS_CASE)
#undef DNAS_CASE
  TORCH_CHECK(false, "unreachable");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_backward(const at::Tensor& grad, const at::Tensor& x,
                                                           const c10::optional<at::Tensor>& weight,
                                                           const at::Tensor& mean, const at::Tensor& invstd,
                                                           bool need_input, bool need_weight, bool need_bias) {
  check_input(x, "x");
  check_input(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad and x differ in shape");
  const int64_t c = x.size(1);
  TORCH_CHECK(supported_width(c), "unsupported channel count ", c);
  at::Tensor w = weight.value_or(at::Tensor());
  if (w.defined()) check_vector(w, c, "weight");
  check_vector(mean, c, "mean");
  check_vector(invstd, c, "invstd");
#define DNAS_CASE(W) if (c == W) return backward_impl<W>(grad, x, w, mean, invstd, need_input, need_weight, need_bias);
  DNAS_BN_WIDTHS(DNAS_CASE)
#undef DNAS_CASE
  TORCH_CHECK(false, "unreachable");
}


// 3x3 window sums with zero padding (stride 1) of a channels-last map: the NB201 average pool before its
// 1/count map. Per output row, the three input rows are summed into a (W, C) buffer, then three
// neighbouring columns of it. The operation is its own adjoint, so the backward is the same kernel.
template <int64_t C>
at::Tensor box_sum3x3_impl(const at::Tensor& x) {
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  const float* xp = x.data_ptr<float>();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  float* yp = y.data_ptr<float>();
  const int64_t row = w * C;
  at::parallel_for(0, n * h, 8, [&](int64_t i0, int64_t i1) {
    std::vector<float> buf((w + 2) * C, 0.f);
    float* col = buf.data() + C;  // col[-C .. -1] and col[w*C .. (w+1)*C - 1] stay zero
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / h, r = i % h;
      const float* __restrict__ mid = xp + (b * h + r) * row;
      const float* __restrict__ up = r > 0 ? mid - row : nullptr;
      const float* __restrict__ down = r + 1 < h ? mid + row : nullptr;
      if (up && down) {
#pragma omp simd
        for (int64_t k = 0; k < row; ++k) col[k] = up[k] + mid[k] + down[k];
      } else if (up || down) {
        const float* __restrict__ other = up ? up : down;
#pragma omp simd
        for (int64_t k = 0; k < row; ++k) col[k] = other[k] + mid[k];
      } else {
#pragma omp simd
        for (int64_t k = 0; k < row; ++k) col[k] = mid[k];
      }
      float* __restrict__ out = yp + (b * h + r) * row;
      for (int64_t q = 0; q < w; ++q) {
        const float* __restrict__ c0 = col + (q - 1) * C;
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) out[q * C + j] = c0[j] + c0[C + j] + c0[2 * C + j];
      }
    }
  });
  return y;
}

at::Tensor box_sum3x3(const at::Tensor& x) {
  check_input(x, "x");
  const int64_t c = x.size(1);
  TORCH_CHECK(supported_width(c), "unsupported channel count ", c);
#define DNAS_CASE(W) if (c == W) return box_sum3x3_impl<W>(x);
  DNAS_BN_WIDTHS(DNAS_CASE)
#undef DNAS_CASE
  TORCH_CHECK(false, "unreachable");
}

// Autograd in C++ (a Python autograd.Function costs ~70 us per call forward + backward, about half of
// what the kernels save). A gradient that never arrives (a node sum that does not reach the loss)
// gives None, not zeros, as ATen's own nodes do. With create_graph (double backward) the backward
// runs ATen's differentiable native_batch_norm_backward on the same saved statistics.
class BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
 public:
  // Optional tensors that are absent are not autograd inputs: needs_input_grad counts present ones only.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
                            double momentum, double eps) {
    auto out = bn_forward(x, weight, bias, running_mean, running_var, momentum, eps);
    ctx->save_for_backward({x, weight.value_or(at::Tensor()), std::get<1>(out), std::get<2>(out)});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_weight"] = weight.has_value();
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->set_materialize_grads(false);
    return std::get<0>(out);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& grad = grads[0];
    torch::autograd::variable_list out(7);
    if (!grad.defined()) return out;
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &mean = saved[2], &invstd = saved[3];
    const bool has_w = ctx->saved_data["has_weight"].toBool(), has_b = ctx->saved_data["has_bias"].toBool();
    const bool need_x = ctx->needs_input_grad(0), need_w = has_w && ctx->needs_input_grad(1);
    const bool need_b = has_b && ctx->needs_input_grad(has_w ? 2 : 1);
    c10::optional<at::Tensor> w = has_w ? c10::optional<at::Tensor>(weight) : c10::nullopt;
    std::tuple<at::Tensor, at::Tensor, at::Tensor> g;
    if (at::GradMode::is_enabled()) {
      g = at::native_batch_norm_backward(grad, x, w, c10::nullopt, c10::nullopt, mean, invstd, true,
                                         ctx->saved_data["eps"].toDouble(), {need_x, need_w, need_b});
    } else {
      g = bn_backward(grad.contiguous(at::MemoryFormat::ChannelsLast), x, w, mean, invstd, need_x, need_w, need_b);
    }
    if (need_x) out[0] = std::get<0>(g);
    if (need_w) out[1] = std::get<1>(g);
    if (need_b) out[2] = std::get<2>(g);
    return out;
  }
};

// The 3x3 window sum is its own adjoint: the backward applies this Function again (double backward works).
class BoxSumFunction : public torch::autograd::Function<BoxSumFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
    ctx->set_materialize_grads(false);
    return box_sum3x3(x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    return {BoxSumFunction::apply(grads[0].contiguous(at::MemoryFormat::ChannelsLast))};
  }
};

at::Tensor batch_norm_train(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                            const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
                            const c10::optional<at::Tensor>& running_var, double momentum, double eps) {
  return BatchNormFunction::apply(x, weight, bias, running_mean, running_var, momentum, eps);
}

at::Tensor box_sum(const at::Tensor& x) { return BoxSumFunction::apply(x); }

}  // namespace

TORCH_LIBRARY(dnas_native, m) {
  m.def("supported_width(int c) -> bool", [](int64_t c) { return supported_width(c); });
  // Both with autograd (a C++ autograd Function each).
  m.def("batch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
        "float momentum, float eps) -> Tensor",
        batch_norm_train);
  m.def("box_sum3x3(Tensor x) -> Tensor", box_sum);
}
