// Fused CPU kernels for one Elman RNN direction (jax.ffi), tanh or ReLU:
//   h' = act(x + W_hh h)      where the slab holds x = W_ih x_t + b_ih + b_hh
//
// Layouts, lengths, members and the work split: support.cc (G = 1). The forward writes the
// states over the slab when XLA can give its buffer; the backward's
//   da     [M..., T, B, H]      d loss / d pre-activation (the slab's gradient)
// is written over d_hs the same way. act' is read from the output: tanh' = 1 - h^2,
// relu' = [h > 0]. The backward has two phases per step: da_t of a task's units, then the
// task's columns of dh = da_t @ W.

#include "support.cc"

namespace {

enum class Activation { kTanh, kRelu };

// h = act(pre + a) over one batch row's units; pre and h may be the same memory.
template <Activation A, typename T>
__attribute__((noinline)) void RnnForwardUnits(int64_t units, const T* pre,
                                               const T* __restrict a, T* h) {
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) {
    const T x = pre[j] + a[j];
    h[j] = A == Activation::kTanh ? std::tanh(x) : (x > T(0) ? x : T(0));
  }
}

// da = (dh + dy) act'(h) over one batch row's units; dy and da may be the same memory.
template <Activation A, typename T>
__attribute__((noinline)) void RnnBackwardUnits(int64_t units, const T* __restrict h,
                                                const T* dy, const T* __restrict dh, T* da) {
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) {
    const T slope = A == Activation::kTanh ? T(1) - h[j] * h[j] : (h[j] > T(0) ? T(1) : T(0));
    da[j] = (dh[j] + dy[j]) * slope;
  }
}

template <Activation A, ffi::DataType DT>
ffi::Error RnnForward(ffi::ThreadPool pool, ffi::Buffer<DT> w, ffi::Buffer<DT> slab,
                      ffi::Buffer<DT> h0, ffi::Buffer<ffi::S32> lengths, int32_t reverse,
                      int32_t parts, ffi::ResultBuffer<DT> hs, ffi::ResultBuffer<DT> h_last) {
  using T = ffi::NativeType<DT>;
  Layout L;
  ffi::Error error = ReadLayout(w.dimensions(), slab.dimensions(), h0.element_count(),
                                lengths.element_count(), 1, &L);
  if (error.failure()) return error;
  const int64_t hidden = L.hidden;
  const Split split{hidden, NumParts(pool, L, parts)};
  const int64_t tasks = L.members * split.parts;
  const T* wp = w.typed_data();
  const int32_t* lp = lengths.typed_data();
  T* hp = hs->typed_data();
  // the states are computed in place from the slab (aliased when the slab dies here)
  if (hp != slab.typed_data())
    std::memcpy(hp, slab.typed_data(), sizeof(T) * L.members * L.slab());

  std::vector<std::unique_ptr<PackedMatrix<T>>> packed(tasks);
  std::vector<std::vector<T>> scratch(tasks);  // [B, units (padded)] = h_prev @ W_p^T
  auto phase = [&](int64_t q, int64_t task) {
    const int64_t m = split.Member(task), j0 = split.j0(task), units = split.units(task);
    if (q == 0) {
      packed[task] = PackForward(wp + m * L.weights(), hidden, 1, j0, units);
      scratch[task].resize(L.batch * packed[task]->padded_columns());
      return;
    }
    const int64_t n = q - 1, t = StepAt(n, L.steps, reverse), t_prev = reverse ? t + 1 : t - 1;
    const T* h_prev = n == 0 ? h0.typed_data() + m * L.state()
                             : hp + m * L.states() + t_prev * L.state();
    T* h = hp + m * L.states() + t * L.state();
    T* a = scratch[task].data();
    const int64_t lda = packed[task]->padded_columns();
    packed[task]->Multiply(L.batch, h_prev, hidden, a, lda);
    for (int64_t b = 0; b < L.batch; ++b) {
      const int64_t row = b * hidden + j0;
      if (t < lp[m * L.batch + b])
        RnnForwardUnits<A, T>(units, h + row, a + b * lda, h + row);
      else  // padding: the carry stays
        CarryUnits(units, h_prev + row, h + row);
    }
  };
  PhaseRunner::Run(pool, L.steps + 1, tasks, phase);
  CopyFinal(L, reverse, hp, h0.typed_data(), h_last->typed_data());
  return ffi::Error::Success();
}

// Backward, per step t (against the forward's direction), with the carry dh:
//   da_t = (dh + dy_t) act'(h_t);  dh <- da_t @ W_hh
// At a padded step h_t = h_{t-1}: dh += dy_t, da_t = 0.
template <Activation A, ffi::DataType DT>
ffi::Error RnnBackward(ffi::ThreadPool pool, ffi::Buffer<DT> w, ffi::Buffer<DT> hs,
                       ffi::Buffer<ffi::S32> lengths, ffi::Buffer<DT> d_hs,
                       ffi::Buffer<DT> d_h_last, int32_t reverse, int32_t parts,
                       ffi::ResultBuffer<DT> da, ffi::ResultBuffer<DT> d_h0) {
  using T = ffi::NativeType<DT>;
  Layout L;
  ffi::Error error = ReadLayout(w.dimensions(), hs.dimensions(), d_h_last.element_count(),
                                lengths.element_count(), 1, &L);
  if (error.failure()) return error;
  const int64_t hidden = L.hidden;
  const Split split{hidden, NumParts(pool, L, parts)};
  const int64_t tasks = L.members * split.parts;
  const T* wp = w.typed_data();
  const int32_t* lp = lengths.typed_data();
  const T* hp = hs.typed_data();
  T* dap = da->typed_data();
  T* dh_carry = d_h0->typed_data();  // the carry lives in the output
  std::memcpy(dh_carry, d_h_last.typed_data(), sizeof(T) * L.members * L.state());
  // da is computed in place from d_hs (aliased by XLA when d_hs dies here)
  if (dap != d_hs.typed_data())
    std::memcpy(dap, d_hs.typed_data(), sizeof(T) * L.members * L.slab());

  std::vector<std::unique_ptr<PackedMatrix<T>>> packed(tasks);
  std::vector<std::vector<T>> scratch(tasks);  // dh's columns before they go into dh_carry
  auto phase = [&](int64_t q, int64_t task) {
    const int64_t m = split.Member(task), j0 = split.j0(task), units = split.units(task);
    if (q == 0) {
      packed[task] = PackBackward(wp + m * L.weights(), hidden, 1, j0, units);
      scratch[task].resize(L.batch * packed[task]->padded_columns());
      return;
    }
    const int64_t n = (q - 1) / 2, t = StepAt(n, L.steps, !reverse);
    const int32_t* len = lp + m * L.batch;
    T* a = dap + m * L.slab() + t * L.slab_step();  // holds dy_t until it holds da_t
    T* dh = dh_carry + m * L.state();
    if ((q - 1) % 2 == 1) {  // dh[:, j0:j1] = da_t @ W[:, j0:j1] (padded rows keep theirs)
      const int64_t ldo = packed[task]->padded_columns();
      T* out = scratch[task].data();
      packed[task]->Multiply(L.batch, a, hidden, out, ldo);
      for (int64_t b = 0; b < L.batch; ++b)
        if (t < len[b]) std::memcpy(dh + b * hidden + j0, out + b * ldo, sizeof(T) * units);
      return;
    }
    const T* h = hp + m * L.states() + t * L.state();
    for (int64_t b = 0; b < L.batch; ++b) {
      const int64_t row = b * hidden + j0;
      if (t < len[b]) {
        RnnBackwardUnits<A, T>(units, h + row, a + row, dh + row, a + row);
      } else {
        for (int64_t j = 0; j < units; ++j) dh[row + j] += a[row + j];
        std::memset(a + row, 0, sizeof(T) * units);
      }
    }
  };
  PhaseRunner::Run(pool, 2 * L.steps + 1, tasks, phase);
  return ffi::Error::Success();
}

}  // namespace

#define JAXRNN_RNN_HANDLERS(NAME, A, SUFFIX, DT)                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_##NAME##_forward_##SUFFIX, (RnnForward<A, DT>), \
                                ffi::Ffi::Bind()                                      \
                                    .Ctx<ffi::ThreadPool>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<ffi::S32>>()                     \
                                    .Attr<int32_t>("reverse")                         \
                                    .Attr<int32_t>("parts")                           \
                                    .Ret<ffi::Buffer<DT>>()                           \
                                    .Ret<ffi::Buffer<DT>>());                         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_##NAME##_backward_##SUFFIX, (RnnBackward<A, DT>), \
                                ffi::Ffi::Bind()                                      \
                                    .Ctx<ffi::ThreadPool>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<ffi::S32>>()                     \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Attr<int32_t>("reverse")                         \
                                    .Attr<int32_t>("parts")                           \
                                    .Ret<ffi::Buffer<DT>>()                           \
                                    .Ret<ffi::Buffer<DT>>());

JAXRNN_RNN_HANDLERS(rnn_tanh, Activation::kTanh, f32, ffi::F32)
JAXRNN_RNN_HANDLERS(rnn_tanh, Activation::kTanh, f64, ffi::F64)
JAXRNN_RNN_HANDLERS(rnn_relu, Activation::kRelu, f32, ffi::F32)
JAXRNN_RNN_HANDLERS(rnn_relu, Activation::kRelu, f64, ffi::F64)
