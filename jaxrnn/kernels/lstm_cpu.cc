// Fused CPU kernels for one LSTM direction (jax.ffi): the forward time loop, and the backward
// loop that produces the gate gradients, each in one XLA custom call.
//
// Why: inside an XLA:CPU while loop every fusion, slice and stack runs as its own op at
// ~5-6 us, so a pure-JAX layer-step costs about twice its recurrent GEMM (BENCHMARKS.md).
// Here a step is one GEMM and one vectorised pass over the gates per thread.
//
// Layouts, lengths, members and the work split: support.cc. Besides those (gates i, f, g, o):
//   c0     [M..., B, H]
//   cs     [M..., T, B, H]      cell states after each step (carried at padded steps)
//   gates  [M..., T, B, 4H]     activated gates sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
//   da     [M..., T, B, 4H]     d loss / d pre-activations (the slab's gradient)
// The backward has two phases per step: the gate gradients of a task's units (they need only
// those units' dh), then the task's columns of dh = da_t @ W (they need all of da_t).
//
// jaxrnn/kernels/__init__.py compiles this file with -O3 -march=native and the glibc flags that
// let GCC call libmvec's vector exp and tanh (-D__FAST_MATH__ without -ffast-math's other
// assumptions).

#include "support.cc"

namespace {

// The forward update of one batch row's units [j0, j0 + units): on entry gate (the row at j0,
// gate stride H) holds the slab's pre-activations, on exit the activated gates; a is the row
// of h_prev @ W_p^T (gate stride units). One loop per gate so that each vectorises (libmvec
// exp and tanh); `omp simd` because gate is read and written in place.
template <typename T>
__attribute__((noinline)) void ForwardUnits(int64_t units, int64_t hidden, T* gate,
                                            const T* __restrict a, const T* __restrict c_prev,
                                            T* __restrict c, T* __restrict h) {
  T* gi = gate;
  T* gf = gate + hidden;
  T* gg = gate + 2 * hidden;
  T* go = gate + 3 * hidden;
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) gi[j] = Sigmoid(gi[j] + a[j]);
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) gf[j] = Sigmoid(gf[j] + a[units + j]);
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) gg[j] = std::tanh(gg[j] + a[2 * units + j]);
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) go[j] = Sigmoid(go[j] + a[3 * units + j]);
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) {
    const T cj = gf[j] * c_prev[j] + gi[j] * gg[j];
    c[j] = cj;
    h[j] = go[j] * std::tanh(cj);
  }
}

// The backward update of one batch row's units (see LstmBackward), in place: on entry gd (the
// row at j0, gate stride H) holds the activated gates, on exit their gradients da; dh_io and
// dc_io are the carries: dh_io leaves holding the total gradient into h_t, dc_io dc_t f.
template <typename T>
__attribute__((noinline)) void BackwardUnits(int64_t units, int64_t hidden, T* gd,
                                             const T* __restrict c, const T* __restrict c_prev,
                                             const T* __restrict dy, T* __restrict dh_io,
                                             T* __restrict dc_io) {
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) {
    const T i = gd[j], f = gd[hidden + j], g = gd[2 * hidden + j], o = gd[3 * hidden + j];
    const T dh = dh_io[j] + dy[j];
    const T tc = std::tanh(c[j]);
    const T dc = dc_io[j] + dh * o * (T(1) - tc * tc);
    gd[j] = dc * g * i * (T(1) - i);
    gd[hidden + j] = dc * c_prev[j] * f * (T(1) - f);
    gd[2 * hidden + j] = dc * i * (T(1) - g * g);
    gd[3 * hidden + j] = dh * tc * o * (T(1) - o);
    dh_io[j] = dh;
    dc_io[j] = dc * f;
  }
}

template <ffi::DataType DT>
ffi::Error LstmForward(ffi::ThreadPool pool, ffi::Buffer<DT> w, ffi::Buffer<DT> slab,
                       ffi::Buffer<DT> h0, ffi::Buffer<DT> c0, ffi::Buffer<ffi::S32> lengths,
                       int32_t reverse, int32_t parts, ffi::ResultBuffer<DT> hs,
                       ffi::ResultBuffer<DT> cs, ffi::ResultBuffer<DT> gates,
                       ffi::ResultBuffer<DT> h_last, ffi::ResultBuffer<DT> c_last) {
  using T = ffi::NativeType<DT>;
  Layout L;
  ffi::Error error = ReadLayout(w.dimensions(), slab.dimensions(), h0.element_count(),
                                lengths.element_count(), 4, &L);
  if (error.failure()) return error;
  const int64_t hidden = L.hidden, width = L.width();
  const Split split{hidden, NumParts(pool, L, parts)};
  const int64_t tasks = L.members * split.parts;
  const T* wp = w.typed_data();
  const int32_t* lp = lengths.typed_data();
  T* hp = hs->typed_data();
  T* cp = cs->typed_data();
  T* gp = gates->typed_data();

  // gates is computed in place from the slab: XLA passes the slab's own buffer when the
  // slab is not needed after this call (input_output_aliases), else a fresh one to fill
  if (gp != slab.typed_data())
    std::memcpy(gp, slab.typed_data(), sizeof(T) * L.members * L.slab());

  std::vector<std::unique_ptr<PackedMatrix<T>>> packed(tasks);
  std::vector<std::vector<T>> scratch(tasks);  // [B, 4 units (padded)] = h_prev @ W_p^T
  auto phase = [&](int64_t q, int64_t task) {
    const int64_t m = split.Member(task), j0 = split.j0(task), units = split.units(task);
    if (q == 0) {
      packed[task] = PackForward(wp + m * L.weights(), hidden, 4, j0, units);
      scratch[task].resize(L.batch * packed[task]->padded_columns());
      return;
    }
    const int64_t n = q - 1, t = StepAt(n, L.steps, reverse), t_prev = reverse ? t + 1 : t - 1;
    const T* h_prev = n == 0 ? h0.typed_data() + m * L.state()
                             : hp + m * L.states() + t_prev * L.state();
    const T* c_prev = n == 0 ? c0.typed_data() + m * L.state()
                             : cp + m * L.states() + t_prev * L.state();
    T* h = hp + m * L.states() + t * L.state();
    T* c = cp + m * L.states() + t * L.state();
    T* gate = gp + m * L.slab() + t * L.slab_step();
    T* a = scratch[task].data();
    const int64_t lda = packed[task]->padded_columns();
    packed[task]->Multiply(L.batch, h_prev, hidden, a, lda);
    for (int64_t b = 0; b < L.batch; ++b) {
      const int64_t row = b * hidden + j0;
      if (t < lp[m * L.batch + b]) {
        ForwardUnits<T>(units, hidden, gate + b * width + j0, a + b * lda, c_prev + row,
                        c + row, h + row);
      } else {  // padding: the carry stays
        CarryUnits(units, h_prev + row, h + row);
        CarryUnits(units, c_prev + row, c + row);
      }
    }
  };
  PhaseRunner::Run(pool, L.steps + 1, tasks, phase);
  CopyFinal(L, reverse, hp, h0.typed_data(), h_last->typed_data());
  CopyFinal(L, reverse, cp, c0.typed_data(), c_last->typed_data());
  return ffi::Error::Success();
}

// Backward, per step t (against the forward's direction), with carries dh, dc:
//   dh += dy_t;  dc_t = dc + dh o (1 - tanh(c)^2)
//   da_i = dc_t g i (1-i), da_f = dc_t c_prev f (1-f), da_g = dc_t i (1-g^2),
//   da_o = dh tanh(c) o (1-o);  dc <- dc_t f;  dh <- da_t @ W_hh
// At a padded step h_t = h_{t-1} and c_t = c_{t-1}: dh += dy_t, dc stays, da_t = 0.
template <ffi::DataType DT>
ffi::Error LstmBackward(ffi::ThreadPool pool, ffi::Buffer<DT> w, ffi::Buffer<DT> gates,
                        ffi::Buffer<DT> cs, ffi::Buffer<DT> c0, ffi::Buffer<ffi::S32> lengths,
                        ffi::Buffer<DT> d_hs, ffi::Buffer<DT> d_h_last,
                        ffi::Buffer<DT> d_c_last, int32_t reverse, int32_t parts,
                        ffi::ResultBuffer<DT> da, ffi::ResultBuffer<DT> d_h0,
                        ffi::ResultBuffer<DT> d_c0) {
  using T = ffi::NativeType<DT>;
  Layout L;
  ffi::Error error = ReadLayout(w.dimensions(), gates.dimensions(), c0.element_count(),
                                lengths.element_count(), 4, &L);
  if (error.failure()) return error;
  const int64_t hidden = L.hidden, width = L.width();
  const Split split{hidden, NumParts(pool, L, parts)};
  const int64_t tasks = L.members * split.parts;
  const T* wp = w.typed_data();
  const int32_t* lp = lengths.typed_data();
  const T* cp = cs.typed_data();
  const T* dyp = d_hs.typed_data();
  T* dap = da->typed_data();
  T* dh_carry = d_h0->typed_data();  // the carries live in the outputs
  T* dc_carry = d_c0->typed_data();
  std::memcpy(dh_carry, d_h_last.typed_data(), sizeof(T) * L.members * L.state());
  std::memcpy(dc_carry, d_c_last.typed_data(), sizeof(T) * L.members * L.state());
  // da is computed in place from the gates (aliased by XLA when the gates die here)
  if (dap != gates.typed_data())
    std::memcpy(dap, gates.typed_data(), sizeof(T) * L.members * L.slab());

  std::vector<std::unique_ptr<PackedMatrix<T>>> packed(tasks);
  std::vector<std::vector<T>> scratch(tasks);  // dh's columns before they go into dh_carry
  auto phase = [&](int64_t q, int64_t task) {
    const int64_t m = split.Member(task), j0 = split.j0(task), units = split.units(task);
    if (q == 0) {
      packed[task] = PackBackward(wp + m * L.weights(), hidden, 4, j0, units);
      scratch[task].resize(L.batch * packed[task]->padded_columns());
      return;
    }
    const int64_t n = (q - 1) / 2, t = StepAt(n, L.steps, !reverse);
    const int32_t* len = lp + m * L.batch;
    T* a = dap + m * L.slab() + t * L.slab_step();
    T* dh = dh_carry + m * L.state();
    T* dc = dc_carry + m * L.state();
    if ((q - 1) % 2 == 1) {  // dh[:, j0:j1] = da_t @ W[:, j0:j1] (padded rows keep theirs)
      const int64_t ldo = packed[task]->padded_columns();
      T* out = scratch[task].data();
      packed[task]->Multiply(L.batch, a, width, out, ldo);
      for (int64_t b = 0; b < L.batch; ++b)
        if (t < len[b]) std::memcpy(dh + b * hidden + j0, out + b * ldo, sizeof(T) * units);
      return;
    }
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    const bool first = t_prev < 0 || t_prev >= L.steps;
    const T* c_prev = first ? c0.typed_data() + m * L.state()
                            : cp + m * L.states() + t_prev * L.state();
    const T* c = cp + m * L.states() + t * L.state();
    const T* dy = dyp + m * L.states() + t * L.state();
    for (int64_t b = 0; b < L.batch; ++b) {
      const int64_t row = b * hidden + j0;
      T* ga = a + b * width + j0;
      if (t < len[b]) {
        BackwardUnits<T>(units, hidden, ga, c + row, c_prev + row, dy + row, dh + row,
                         dc + row);
      } else {
        for (int64_t g = 0; g < 4; ++g) std::memset(ga + g * hidden, 0, sizeof(T) * units);
        for (int64_t j = 0; j < units; ++j) dh[row + j] += dy[row + j];
      }
    }
  };
  PhaseRunner::Run(pool, 2 * L.steps + 1, tasks, phase);
  return ffi::Error::Success();
}

}  // namespace

#define JAXRNN_LSTM_HANDLERS(SUFFIX, DT)                                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_forward_##SUFFIX, LstmForward<DT>,        \
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
                                    .Ret<ffi::Buffer<DT>>()                          \
                                    .Ret<ffi::Buffer<DT>>());                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_backward_##SUFFIX, LstmBackward<DT>,      \
                                ffi::Ffi::Bind()                                     \
                                    .Ctx<ffi::ThreadPool>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<ffi::S32>>()                    \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Arg<ffi::Buffer<DT>>()                          \
                                    .Attr<int32_t>("reverse")                        \
                                    .Attr<int32_t>("parts")                          \
                                    .Ret<ffi::Buffer<DT>>()                          \
                                    .Ret<ffi::Buffer<DT>>()                          \
                                    .Ret<ffi::Buffer<DT>>());

JAXRNN_LSTM_HANDLERS(f32, ffi::F32)
JAXRNN_LSTM_HANDLERS(f64, ffi::F64)

// The GEMM's row tile this library was compiled with: 8 with AVX-512, else 4 (for tests and
// the benchmark's record of which path ran).
extern "C" int jaxrnn_gemm_row_tile() { return kRowTile; }
