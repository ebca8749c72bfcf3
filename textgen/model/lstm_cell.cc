// One LSTM time step's elementwise work, forward and backward, as two TensorFlow ops.
//
// Used by textgen/model/fastrnn.py when a training step is not XLA-compiled (the bf16
// step): there every time step's gate arithmetic would otherwise be a dozen small
// TensorFlow kernels or one small XLA cluster, each paying a dispatch, and measured on a
// 2-core AMD EPYC they took longer than the step's matrix product. Here each is one
// pass over the batch's rows.
//
// The layout is not written here: the attr `gates` is textgen.model.lstm.LSTM_GATES (the
// names of the four column blocks in order; "c" is the tanh cell candidate, the others
// sigmoid gates), and the weights are pre-scaled as that module says, so every gate is
// scale * tanh(z) + offset with z = x_proj + bias + h_prev @ recurrent.
//
// Forward  TextgenLstmCell(xp, bias, hr, h, c, m) -> (gate_tanh, h_new, c_new, h_low)
//   xp (B, 4H) low: the step's input projection; bias (4H) float (scaled); hr (B, 4H) low:
//   h_prev @ recurrent; h, c (B, H) float: the previous state; m: float, one value or (B,) / (B, 1), 1 where the
//   step is real (a masked row keeps its state). gate_tanh = tanh(z) (B, 4H) float.
// Backward TextgenLstmCellGrad(gate_tanh, c, c_prev, dh_out, dh_rec, dh_pass, dc_next, m,
//   dbias) -> (dz_low, dc_prev, dh_pass_prev, dbias_new)
//   dh = dh_out + dh_rec + dh_pass is the gradient of the step's h (from its output, from
//   the next step's product and, for a masked next step, passed through it);
//   dz_low = d loss / d z in low; dbias_new = dbias + the column sums of dz (float).
// `low` is bfloat16 or float (the compute dtype of the products).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace textgen {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
typedef Eigen::bfloat16 bf16;

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) {
  uint32_t bits = static_cast<uint32_t>(Eigen::numext::bit_cast<uint16_t>(v)) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}
template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline bf16 from_float<bf16>(float v) {  // round to nearest even, as tf.cast does
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return Eigen::numext::bit_cast<bf16>(uint16_t(0x7fc0));
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return Eigen::numext::bit_cast<bf16>(static_cast<uint16_t>(bits >> 16));
}

// tanh over n floats in place, Eigen's vectorised approximation (the one TensorFlow's
// own Tanh kernel uses)
inline void tanh_inplace(float* x, int64_t n) {
  Eigen::Map<Eigen::ArrayXf> a(x, n);
  a = a.tanh();
}

struct Layout {  // where each gate's block starts, in units of H
  int i = 0, f = 1, g = 2, o = 3;
};

// reads the attr `gates` into `out`; false (with the error set on ctx) when it is wrong
bool read_layout(OpKernelConstruction* ctx, Layout* out) {
  std::vector<std::string> names;
  auto status = ctx->GetAttr("gates", &names);
  if (!status.ok()) {
    ctx->CtxFailure(__FILE__, __LINE__, status);
    return false;
  }
  int seen = 0;
  for (size_t k = 0; k < names.size() && k < 4; ++k) {
    const std::string& n = names[k];
    if (n == "i") out->i = k, seen |= 1;
    else if (n == "f") out->f = k, seen |= 2;
    else if (n == "c") out->g = k, seen |= 4;
    else if (n == "o") out->o = k, seen |= 8;
  }
  if (names.size() != 4 || seen != 15) {
    ctx->CtxFailure(__FILE__, __LINE__, InvalidArgument("gates must be i, f, c, o in some order"));
    return false;
  }
  return true;
}

// the mask value of row b: m holds one value or one per row
inline float mask_at(const float* m, int64_t count, int64_t b) { return count == 1 ? m[0] : m[b]; }

template <typename Low>
class LstmCellOp : public OpKernel {
 public:
  explicit LstmCellOp(OpKernelConstruction* ctx) : OpKernel(ctx) { read_layout(ctx, &layout_); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& xp = ctx->input(0);
    const Tensor& bias = ctx->input(1);
    const Tensor& hr = ctx->input(2);
    const Tensor& h = ctx->input(3);
    const Tensor& c = ctx->input(4);
    const Tensor& m = ctx->input(5);
    OP_REQUIRES(ctx, c.dims() == 2, InvalidArgument("c must be (batch, units)"));
    const int64_t B = c.dim_size(0), H = c.dim_size(1), G = 4 * H;
    OP_REQUIRES(ctx, xp.shape() == TensorShape({B, G}) && hr.shape() == xp.shape(),
                InvalidArgument("xp and hr must be (batch, 4 units)"));
    OP_REQUIRES(ctx, h.shape() == c.shape(), InvalidArgument("h and c must be (batch, units)"));
    OP_REQUIRES(ctx, bias.NumElements() == G, InvalidArgument("bias must have 4 units values"));
    OP_REQUIRES(ctx, m.NumElements() == 1 || m.NumElements() == B,
                InvalidArgument("m must hold one value or one per row"));
    Tensor *gt_t, *h_t, *c_new_t, *h_low_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, xp.shape(), &gt_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, c.shape(), &h_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, c.shape(), &c_new_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, c.shape(), &h_low_t));
    const Low* xpv = xp.flat<Low>().data();
    const Low* hrv = hr.flat<Low>().data();
    const float* bv = bias.flat<float>().data();
    const float* cv = c.flat<float>().data();
    const float* hp = h.flat<float>().data();
    const float* mv = m.flat<float>().data();
    const int64_t mn = m.NumElements();
    float* gt = gt_t->flat<float>().data();
    float* hv = h_t->flat<float>().data();
    float* cn = c_new_t->flat<float>().data();
    Low* hl = h_low_t->flat<Low>().data();
    const Layout L = layout_;
    auto work = [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        float* z = gt + b * G;
        const Low* xrow = xpv + b * G;
        const Low* hrow = hrv + b * G;
        for (int64_t j = 0; j < G; ++j) z[j] = to_float(xrow[j]) + bv[j] + to_float(hrow[j]);
        tanh_inplace(z, G);
        const float* ti = z + L.i * H;
        const float* tf_ = z + L.f * H;
        const float* tg = z + L.g * H;
        const float* to = z + L.o * H;
        const float* cp = cv + b * H;
        float* cr = cn + b * H;
        float* hrw = hv + b * H;
        for (int64_t j = 0; j < H; ++j) {
          const float ig = 0.5f * ti[j] + 0.5f, fg = 0.5f * tf_[j] + 0.5f;
          cr[j] = fg * cp[j] + ig * tg[j];
          hrw[j] = cr[j];
        }
        tanh_inplace(hrw, H);
        for (int64_t j = 0; j < H; ++j) hrw[j] *= 0.5f * to[j] + 0.5f;
        const float mk = mask_at(mv, mn, b);
        if (mk != 1.0f) {  // a masked step keeps the previous state
          const float* hpr = hp + b * H;
          for (int64_t j = 0; j < H; ++j) {
            cr[j] = cp[j] + mk * (cr[j] - cp[j]);
            hrw[j] = hpr[j] + mk * (hrw[j] - hpr[j]);
          }
        }
        for (int64_t j = 0; j < H; ++j) hl[b * H + j] = from_float<Low>(hrw[j]);
      }
    };
    work(0, B);  // one thread: TensorFlow's intra-op pool measured slower here (the
                 // rows are 10-70 us of work, the product beside it uses both cores)
  }

 private:
  Layout layout_;
};

// dz's row in the compute dtype, and its sum into the bias's gradient
template <typename Low>
inline void accumulate_row(int64_t G, const float* __restrict row, Low* __restrict dz,
                           float* __restrict db) {
  for (int64_t j = 0; j < G; ++j) {
    dz[j] = from_float<Low>(row[j]);
    db[j] += row[j];
  }
}

// one row of the backward step (restrict: the loop vectorises)
template <typename Low>
inline void grad_row(int64_t H, float mk, const float* __restrict ti, const float* __restrict tf_,
                     const float* __restrict tg, const float* __restrict to,
                     const float* __restrict tc, const float* __restrict cp,
                     const float* __restrict dho, const Low* __restrict dhr,
                     const float* __restrict dhp, const float* __restrict dcn,
                     float* __restrict di, float* __restrict df, float* __restrict dg,
                     float* __restrict dout, float* __restrict dcp, float* __restrict dhpp) {
  for (int64_t j = 0; j < H; ++j) {
    const float dh = dho[j] + to_float(dhr[j]) + dhp[j];
    const float ig = 0.5f * ti[j] + 0.5f, fg = 0.5f * tf_[j] + 0.5f;
    const float og = 0.5f * to[j] + 0.5f, gg = tg[j];
    const float t = tc[j];
    const float dc = dcn[j] + mk * dh * og * (1.0f - t * t);  // h = o * tanh(c)
    // d/dz of scale * tanh(z) + offset: 0.5 (1 - t^2) for a sigmoid gate, 1 - t^2 for c
    di[j] = mk * dc * gg * 0.5f * (1.0f - ti[j] * ti[j]);
    df[j] = mk * dc * cp[j] * 0.5f * (1.0f - tf_[j] * tf_[j]);
    dg[j] = mk * dc * ig * (1.0f - gg * gg);
    dout[j] = mk * dh * t * 0.5f * (1.0f - to[j] * to[j]);
    dcp[j] = dc * (mk * fg + (1.0f - mk));
    dhpp[j] = (1.0f - mk) * dh;  // a masked step passes dh straight through
  }
}

template <typename Low>
class LstmCellGradOp : public OpKernel {
 public:
  explicit LstmCellGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) { read_layout(ctx, &layout_); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& gt_t = ctx->input(0);
    const Tensor& c_t = ctx->input(1);
    const Tensor& cp_t = ctx->input(2);
    const Tensor& dho_t = ctx->input(3);
    const Tensor& dhr_t = ctx->input(4);
    const Tensor& dhp_t = ctx->input(5);
    const Tensor& dcn_t = ctx->input(6);
    const Tensor& m_t = ctx->input(7);
    const Tensor& db_t = ctx->input(8);
    OP_REQUIRES(ctx, c_t.dims() == 2, InvalidArgument("c must be (batch, units)"));
    const int64_t B = c_t.dim_size(0), H = c_t.dim_size(1), G = 4 * H;
    const TensorShape bh = c_t.shape();
    OP_REQUIRES(ctx, gt_t.shape() == TensorShape({B, G}) && dhr_t.shape() == TensorShape({B, H}),
                InvalidArgument("gate_tanh must be (batch, 4 units), dh_rec (batch, units)"));
    OP_REQUIRES(ctx, cp_t.shape() == bh && dho_t.shape() == bh && dhp_t.shape() == bh &&
                         dcn_t.shape() == bh,
                InvalidArgument("c_prev, dh_out, dh_pass and dc_next must be (batch, units)"));
    OP_REQUIRES(ctx, db_t.NumElements() == G, InvalidArgument("dbias must have 4 units values"));
    OP_REQUIRES(ctx, m_t.NumElements() == 1 || m_t.NumElements() == B,
                InvalidArgument("m must hold one value or one per row"));
    Tensor *dz_t, *dcp_t, *dhpp_t, *dbn_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, gt_t.shape(), &dz_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, bh, &dcp_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, bh, &dhpp_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, db_t.shape(), &dbn_t));
    const float* gt = gt_t.flat<float>().data();
    const float* cv = c_t.flat<float>().data();
    const float* cpv = cp_t.flat<float>().data();
    const float* dho = dho_t.flat<float>().data();
    const Low* dhr = dhr_t.flat<Low>().data();
    const float* dhp = dhp_t.flat<float>().data();
    const float* dcn = dcn_t.flat<float>().data();
    const float* mv = m_t.flat<float>().data();
    const int64_t mn = m_t.NumElements();
    Low* dz = dz_t->flat<Low>().data();
    float* dcp = dcp_t->flat<float>().data();
    float* dhpp = dhpp_t->flat<float>().data();
    float* db = dbn_t->flat<float>().data();
    std::memcpy(db, db_t.flat<float>().data(), G * sizeof(float));
    const Layout L = layout_;
    // one thread: TensorFlow's intra-op pool measured slower here (the rows are 10-70 us
    // of work, the product beside it uses both cores); the bias's sum runs in row order
    std::vector<float> tc(H), row(G);
    for (int64_t b = 0; b < B; ++b) {
      const float* g = gt + b * G;
      std::memcpy(tc.data(), cv + b * H, H * sizeof(float));
      tanh_inplace(tc.data(), H);
      const int64_t r = b * H;
      grad_row(H, mask_at(mv, mn, b), g + L.i * H, g + L.f * H, g + L.g * H, g + L.o * H,
               tc.data(), cpv + r, dho + r, dhr + r, dhp + r, dcn + r, row.data() + L.i * H,
               row.data() + L.f * H, row.data() + L.g * H, row.data() + L.o * H, dcp + r,
               dhpp + r);
      accumulate_row(G, row.data(), dz + b * G, db);
    }
  }

 private:
  Layout layout_;
};

}  // namespace textgen

using tensorflow::shape_inference::InferenceContext;

REGISTER_OP("TextgenLstmCell")
    .Input("xp: low")
    .Input("bias: float")
    .Input("hr: low")
    .Input("h: float")
    .Input("c: float")
    .Input("m: float")
    .Output("gate_tanh: float")
    .Output("h_new: float")
    .Output("c_new: float")
    .Output("h_low: low")
    .Attr("low: {float, bfloat16}")
    .Attr("gates: list(string)")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(4));
      c->set_output(2, c->input(4));
      c->set_output(3, c->input(4));
      return absl::OkStatus();
    });

REGISTER_OP("TextgenLstmCellGrad")
    .Input("gate_tanh: float")
    .Input("c: float")
    .Input("c_prev: float")
    .Input("dh_out: float")
    .Input("dh_rec: low")
    .Input("dh_pass: float")
    .Input("dc_next: float")
    .Input("m: float")
    .Input("dbias: float")
    .Output("dz: low")
    .Output("dc_prev: float")
    .Output("dh_pass_prev: float")
    .Output("dbias_new: float")
    .Attr("low: {float, bfloat16}")
    .Attr("gates: list(string)")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, c->input(1));
      c->set_output(3, c->input(8));
      return absl::OkStatus();
    });

#define TEXTGEN_REGISTER(T)                                                                     \
  REGISTER_KERNEL_BUILDER(                                                                      \
      Name("TextgenLstmCell").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("low"),          \
      textgen::LstmCellOp<T>);                                                                  \
  REGISTER_KERNEL_BUILDER(                                                                      \
      Name("TextgenLstmCellGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("low"),      \
      textgen::LstmCellGradOp<T>);
TEXTGEN_REGISTER(float)
TEXTGEN_REGISTER(Eigen::bfloat16)
