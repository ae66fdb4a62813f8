// Fused CPU kernels for one GRU direction (jax.ffi), PyTorch's equations (gates r, z, n):
//   r = sigmoid(x_r + W_hr h + b_hr)        z = sigmoid(x_z + W_hz h + b_hz)
//   n = tanh(x_n + r * (W_hn h + b_hn))     h' = (1 - z) n + z h = n + z (h - n)
// where the slab holds x_r + b_hr, x_z + b_hz and x_n (b_hn stays inside r * (...)).
//
// Layouts, lengths, members and the work split: support.cc. Besides those:
//   b_hn   [M..., H]            (zeros for a layer without bias)
//   gates  [M..., T, B, 3H]     activated r, z, n (written over the slab)
//   hn     [M..., T, B, H]      W_hn h_{t-1} + b_hn
//   da     [M..., T, B, 3H]     d loss / d [W_hr h + .., W_hz h + .., W_hn h + b_hn]: the
//                               gradient that multiplies W_hh (written over the gates); the
//                               slab's gradient is [da_r, da_z, dn]
//   dn     [M..., T, B, H]      d loss / d (x_n + r * hn), the slab's n columns
// The backward has two phases per step, as the LSTM's: the gate gradients of a task's units,
// then the task's columns of dh_prev = dh z + da_t @ W.

#include "support.cc"

namespace {

// The forward update of one batch row's units: gate (the row at j0, gate stride H) holds the
// slab on entry and r, z, n on exit; a is the row of h_prev @ W_p^T (gate stride units).
template <typename T>
__attribute__((noinline)) void GruForwardUnits(int64_t units, int64_t hidden, T* gate,
                                               const T* __restrict a, const T* __restrict b_hn,
                                               const T* __restrict h_prev, T* __restrict hn,
                                               T* __restrict h) {
  T* gr = gate;
  T* gz = gate + hidden;
  T* gn = gate + 2 * hidden;
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) gr[j] = Sigmoid(gr[j] + a[j]);
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) gz[j] = Sigmoid(gz[j] + a[units + j]);
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) {
    hn[j] = a[2 * units + j] + b_hn[j];
    gn[j] = std::tanh(gn[j] + gr[j] * hn[j]);
  }
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) h[j] = gn[j] + gz[j] * (h_prev[j] - gn[j]);
}

// The backward update of one batch row's units (see GruBackward), in place: gd holds r, z, n
// on entry and da_r, da_z, da_hn on exit; dh_io leaves holding the total gradient into h_t,
// dhz the part of dh_prev that does not go through W: dh z.
template <typename T>
__attribute__((noinline)) void GruBackwardUnits(int64_t units, int64_t hidden, T* gd,
                                                const T* __restrict hn,
                                                const T* __restrict h_prev,
                                                const T* __restrict dy, T* __restrict dh_io,
                                                T* __restrict dn_out, T* __restrict dhz) {
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) {
    const T r = gd[j], z = gd[hidden + j], n = gd[2 * hidden + j];
    const T dh = dh_io[j] + dy[j];
    const T dn = dh * (T(1) - z) * (T(1) - n * n);
    gd[j] = dn * hn[j] * r * (T(1) - r);
    gd[hidden + j] = dh * (h_prev[j] - n) * z * (T(1) - z);
    gd[2 * hidden + j] = dn * r;
    dn_out[j] = dn;
    dh_io[j] = dh;
    dhz[j] = dh * z;
  }
}

template <ffi::DataType DT>
ffi::Error GruForward(ffi::ThreadPool pool, ffi::Buffer<DT> w, ffi::Buffer<DT> b_hn,
                      ffi::Buffer<DT> slab, ffi::Buffer<DT> h0, ffi::Buffer<ffi::S32> lengths,
                      int32_t reverse, int32_t parts, ffi::ResultBuffer<DT> hs,
                      ffi::ResultBuffer<DT> gates, ffi::ResultBuffer<DT> hn,
                      ffi::ResultBuffer<DT> h_last) {
  using T = ffi::NativeType<DT>;
  Layout L;
  ffi::Error error = ReadLayout(w.dimensions(), slab.dimensions(), h0.element_count(),
                                lengths.element_count(), 3, &L);
  if (error.failure()) return error;
  if (b_hn.element_count() != static_cast<size_t>(L.members * L.hidden))
    return ffi::Error::InvalidArgument("b_hn must be [H]");
  const int64_t hidden = L.hidden, width = L.width();
  const Split split{hidden, NumParts(pool, L, parts)};
  const int64_t tasks = L.members * split.parts;
  const T* wp = w.typed_data();
  const int32_t* lp = lengths.typed_data();
  T* hp = hs->typed_data();
  T* gp = gates->typed_data();
  T* np = hn->typed_data();
  if (gp != slab.typed_data())
    std::memcpy(gp, slab.typed_data(), sizeof(T) * L.members * L.slab());

  std::vector<std::unique_ptr<PackedMatrix<T>>> packed(tasks);
  std::vector<std::vector<T>> scratch(tasks);  // [B, 3 units (padded)] = h_prev @ W_p^T
  auto phase = [&](int64_t q, int64_t task) {
    const int64_t m = split.Member(task), j0 = split.j0(task), units = split.units(task);
    if (q == 0) {
      packed[task] = PackForward(wp + m * L.weights(), hidden, 3, j0, units);
      scratch[task].resize(L.batch * packed[task]->padded_columns());
      return;
    }
    const int64_t n = q - 1, t = StepAt(n, L.steps, reverse), t_prev = reverse ? t + 1 : t - 1;
    const T* h_prev = n == 0 ? h0.typed_data() + m * L.state()
                             : hp + m * L.states() + t_prev * L.state();
    T* h = hp + m * L.states() + t * L.state();
    T* hn_t = np + m * L.states() + t * L.state();
    T* gate = gp + m * L.slab() + t * L.slab_step();
    T* a = scratch[task].data();
    const int64_t lda = packed[task]->padded_columns();
    packed[task]->Multiply(L.batch, h_prev, hidden, a, lda);
    const T* bias = b_hn.typed_data() + m * hidden + j0;
    for (int64_t b = 0; b < L.batch; ++b) {
      const int64_t row = b * hidden + j0;
      if (t < lp[m * L.batch + b]) {
        GruForwardUnits<T>(units, hidden, gate + b * width + j0, a + b * lda, bias,
                           h_prev + row, hn_t + row, h + row);
      } else {  // padding: the carry stays
        CarryUnits(units, h_prev + row, h + row);
        std::memset(hn_t + row, 0, sizeof(T) * units);
      }
    }
  };
  PhaseRunner::Run(pool, L.steps + 1, tasks, phase);
  CopyFinal(L, reverse, hp, h0.typed_data(), h_last->typed_data());
  return ffi::Error::Success();
}

// Backward, per step t (against the forward's direction), with the carry dh:
//   dh += dy_t;  dn = dh (1-z)(1-n^2);  dz_pre = dh (h_prev - n) z (1-z)
//   dr_pre = dn hn r (1-r);  d hn = dn r;  dh <- dh z + [dr_pre, dz_pre, dn r] @ W_hh
// At a padded step h_t = h_{t-1}: dh += dy_t and the step's gates get no gradient.
template <ffi::DataType DT>
ffi::Error GruBackward(ffi::ThreadPool pool, ffi::Buffer<DT> w, ffi::Buffer<DT> gates,
                       ffi::Buffer<DT> hn, ffi::Buffer<DT> hs, ffi::Buffer<DT> h0,
                       ffi::Buffer<ffi::S32> lengths, ffi::Buffer<DT> d_hs,
                       ffi::Buffer<DT> d_h_last, int32_t reverse, int32_t parts,
                       ffi::ResultBuffer<DT> da, ffi::ResultBuffer<DT> dn,
                       ffi::ResultBuffer<DT> d_h0) {
  using T = ffi::NativeType<DT>;
  Layout L;
  ffi::Error error = ReadLayout(w.dimensions(), gates.dimensions(), h0.element_count(),
                                lengths.element_count(), 3, &L);
  if (error.failure()) return error;
  const int64_t hidden = L.hidden, width = L.width();
  const Split split{hidden, NumParts(pool, L, parts)};
  const int64_t tasks = L.members * split.parts;
  const T* wp = w.typed_data();
  const int32_t* lp = lengths.typed_data();
  const T* hp = hs.typed_data();
  const T* np = hn.typed_data();
  const T* dyp = d_hs.typed_data();
  T* dap = da->typed_data();
  T* dnp = dn->typed_data();
  T* dh_carry = d_h0->typed_data();  // the carry lives in the output
  std::memcpy(dh_carry, d_h_last.typed_data(), sizeof(T) * L.members * L.state());
  if (dap != gates.typed_data())
    std::memcpy(dap, gates.typed_data(), sizeof(T) * L.members * L.slab());

  std::vector<std::unique_ptr<PackedMatrix<T>>> packed(tasks);
  std::vector<std::vector<T>> scratch(tasks);  // [B, units (padded)]: da_t @ W[:, j0:j1]
  std::vector<std::vector<T>> direct(tasks);   // [B, units]: dh z of the task's units
  auto phase = [&](int64_t q, int64_t task) {
    const int64_t m = split.Member(task), j0 = split.j0(task), units = split.units(task);
    if (q == 0) {
      packed[task] = PackBackward(wp + m * L.weights(), hidden, 3, j0, units);
      scratch[task].resize(L.batch * packed[task]->padded_columns());
      direct[task].resize(L.batch * units);
      return;
    }
    const int64_t n = (q - 1) / 2, t = StepAt(n, L.steps, !reverse);
    const int32_t* len = lp + m * L.batch;
    T* a = dap + m * L.slab() + t * L.slab_step();
    T* dh = dh_carry + m * L.state();
    T* dhz = direct[task].data();
    if ((q - 1) % 2 == 1) {  // dh[:, j0:j1] = dh z + da_t @ W[:, j0:j1] (padded rows keep theirs)
      const int64_t ldo = packed[task]->padded_columns();
      T* out = scratch[task].data();
      packed[task]->Multiply(L.batch, a, width, out, ldo);
      for (int64_t b = 0; b < L.batch; ++b) {
        if (t >= len[b]) continue;
        T* dh_row = dh + b * hidden + j0;
#pragma omp simd
        for (int64_t j = 0; j < units; ++j) dh_row[j] = dhz[b * units + j] + out[b * ldo + j];
      }
      return;
    }
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    const bool first = t_prev < 0 || t_prev >= L.steps;
    const T* h_prev = first ? h0.typed_data() + m * L.state()
                            : hp + m * L.states() + t_prev * L.state();
    const T* hn_t = np + m * L.states() + t * L.state();
    const T* dy = dyp + m * L.states() + t * L.state();
    T* dn_t = dnp + m * L.states() + t * L.state();
    for (int64_t b = 0; b < L.batch; ++b) {
      const int64_t row = b * hidden + j0;
      T* ga = a + b * width + j0;
      if (t < len[b]) {
        GruBackwardUnits<T>(units, hidden, ga, hn_t + row, h_prev + row, dy + row, dh + row,
                            dn_t + row, dhz + b * units);
      } else {
        for (int64_t g = 0; g < 3; ++g) std::memset(ga + g * hidden, 0, sizeof(T) * units);
        std::memset(dn_t + row, 0, sizeof(T) * units);
        for (int64_t j = 0; j < units; ++j) dh[row + j] += dy[row + j];
      }
    }
  };
  PhaseRunner::Run(pool, 2 * L.steps + 1, tasks, phase);
  return ffi::Error::Success();
}

}  // namespace

#define JAXRNN_GRU_HANDLERS(SUFFIX, DT)                                               \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_forward_##SUFFIX, GruForward<DT>,          \
                                ffi::Ffi::Bind()                                     \
                                    .Ctx<ffi::ThreadPool>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<ffi::S32>>()                    \
                                    .Attr<int32_t>("reverse")                        \
                                    .Attr<int32_t>("parts")                          \
                                    .Ret<ffi::Buffer<DT>>()                          \
                                    .Ret<ffi::Buffer<DT>>()                          \
                                    .Ret<ffi::Buffer<DT>>()                          \
                                    .Ret<ffi::Buffer<DT>>());                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_backward_##SUFFIX, GruBackward<DT>,        \
                                ffi::Ffi::Bind()                                     \
                                    .Ctx<ffi::ThreadPool>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<ffi::S32>>()                    \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Attr<int32_t>("reverse")                        \
                                    .Attr<int32_t>("parts")                          \
                                    .Ret<ffi::Buffer<DT>>()                          \
                                    .Ret<ffi::Buffer<DT>>()                          \
                                    .Ret<ffi::Buffer<DT>>());

JAXRNN_GRU_HANDLERS(f32, ffi::F32)
JAXRNN_GRU_HANDLERS(f64, ffi::F64)
