// Fused CPU kernels for one LSTM direction (jax.ffi): the forward time loop, and the backward
// loop that produces the gate gradients, each in one XLA custom call.
//
// Why: inside an XLA:CPU while loop every fusion, slice and stack runs as its own op at
// ~5-6 us, so a pure-JAX layer-step costs about twice its recurrent GEMM (BENCHMARKS.md).
// Here a step is one GEMM and one vectorised pass over the gates per thread.
//
// Layouts (PyTorch's, gates i, f, g, o; row-major):
//   w      [4H, H]      weight_hh
//   slab   [T, B, 4H]   x_t @ W_ih^T + b_ih + b_hh
//   h0, c0 [B, H]
//   hs, cs [T, B, H]    states after each step (time order, also when reverse)
//   gates  [T, B, 4H]   activated gates sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
//   da     [T, B, 4H]   d loss / d pre-activations (the slab's gradient)
//
// Work split: the hidden units are cut into P parts, one per thread of XLA's intra-op pool.
// Part p owns units [j0, j1): the gate columns g*H + j of those units, so a forward step is,
// per part, one GEMM h_{t-1} @ W_p^T (W_p = those 4(j1-j0) rows of W, packed once per call)
// and the elementwise update of its own units. All parts of a step must see the whole h_{t-1}: the steps are "phases", and a phase starts when the previous one is done.
// The backward has two phases per step: the gate gradients of a part's units (they need only
// that part's dh), then the part's columns of dh = da_t @ W (they need all of da_t).
//
// Threads claim (phase, part) tasks from one atomic counter, so the calling thread alone can
// finish the call if the pool's workers are busy: no deadlock, whatever the pool does.
//
// The GEMMs are this file's own (PackedMatrix: the weights packed once per call, a register-
// tiled micro-kernel per step); no BLAS is needed. jaxrnn/kernels/__init__.py compiles this file with -O3 -march=native and the glibc flags that let GCC call libmvec's
// vector exp and tanh (-D__FAST_MATH__ without -ffast-math's other assumptions).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ------------------------------------------------------------------------------ the GEMM
// The per-step GEMMs multiply by a slice of W_hh that is fixed for the whole call, so it is
// packed once per call into panels of NR = 2 vectors of columns, and each step runs a register-
// tiled micro-kernel over them (MR rows x NR columns of accumulators). BLAS libraries re-pack
// their right operand on every call: at these sizes (M = B = 16-64 rows) this kernel ran
// 1.3-2.1x OpenBLAS's single-threaded sgemm (BENCHMARKS.md).

template <typename T>
struct Vec {
  static constexpr int64_t kLanes = 64 / sizeof(T);  // one AVX-512 register
  typedef T type __attribute__((vector_size(64)));
  typedef T unaligned __attribute__((vector_size(64), aligned(sizeof(T))));
};

#ifdef __AVX512F__
constexpr int kRowTile = 8;  // 16 accumulators of 32 registers
#else
constexpr int kRowTile = 4;  // each 64-byte vector is two AVX2 registers: 16 of 16
#endif

// The packed right operand of C = A @ B for B [K, N] given elementwise by b(k, n): panel q
// holds columns q*NR .. q*NR + NR - 1 of every row k, zero past N, 64-byte aligned.
template <typename T>
class PackedMatrix {
 public:
  static constexpr int64_t kPanel = 2 * Vec<T>::kLanes;

  template <typename Element>
  PackedMatrix(int64_t k, int64_t n, Element b)
      : k_(k), panels_((n + kPanel - 1) / kPanel),
        data_(static_cast<T*>(std::aligned_alloc(64, Bytes(k, n)))) {
    for (int64_t q = 0; q < panels_; ++q)
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t c = 0; c < kPanel; ++c) {
          const int64_t col = q * kPanel + c;
          data_[(q * k + kk) * kPanel + c] = col < n ? b(kk, col) : T(0);
        }
  }
  ~PackedMatrix() { std::free(data_); }
  PackedMatrix(const PackedMatrix&) = delete;
  PackedMatrix& operator=(const PackedMatrix&) = delete;

  int64_t padded_columns() const { return panels_ * kPanel; }

  // C[m, padded_columns()] = A[m, K] @ B (lda, ldc: leading dimensions)
  void Multiply(int64_t m, const T* a, int64_t lda, T* c, int64_t ldc) const {
    for (int64_t q = 0; q < panels_; ++q) {
      const T* panel = data_ + q * k_ * kPanel;
      T* cq = c + q * kPanel;
      int64_t r = 0;
      for (; r + kRowTile <= m; r += kRowTile)
        Tile<kRowTile>(a + r * lda, lda, panel, cq + r * ldc, ldc);
      switch (m - r) {  // the rows left over
        case 7: Tile<7>(a + r * lda, lda, panel, cq + r * ldc, ldc); break;
        case 6: Tile<6>(a + r * lda, lda, panel, cq + r * ldc, ldc); break;
        case 5: Tile<5>(a + r * lda, lda, panel, cq + r * ldc, ldc); break;
        case 4: Tile<4>(a + r * lda, lda, panel, cq + r * ldc, ldc); break;
        case 3: Tile<3>(a + r * lda, lda, panel, cq + r * ldc, ldc); break;
        case 2: Tile<2>(a + r * lda, lda, panel, cq + r * ldc, ldc); break;
        case 1: Tile<1>(a + r * lda, lda, panel, cq + r * ldc, ldc); break;
        default: break;
      }
    }
  }

 private:
  static size_t Bytes(int64_t k, int64_t n) {
    const int64_t panels = std::max<int64_t>(1, (n + kPanel - 1) / kPanel);
    return sizeof(T) * panels * kPanel * std::max<int64_t>(1, k);  // a multiple of 64
  }

  // C[MR, NR] = A[MR, K] @ one panel
  template <int MR>
  void Tile(const T* a, int64_t lda, const T* panel, T* c, int64_t ldc) const {
    using V = typename Vec<T>::type;
    using U = typename Vec<T>::unaligned;
    constexpr int64_t L = Vec<T>::kLanes;
    V acc0[MR], acc1[MR];
    for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = V{};
    for (int64_t kk = 0; kk < k_; ++kk) {
      const V b0 = *reinterpret_cast<const V*>(panel + kk * kPanel);
      const V b1 = *reinterpret_cast<const V*>(panel + kk * kPanel + L);
      for (int r = 0; r < MR; ++r) {
        const T ar = a[r * lda + kk];
        acc0[r] += ar * b0;
        acc1[r] += ar * b1;
      }
    }
    for (int r = 0; r < MR; ++r) {
      *reinterpret_cast<U*>(c + r * ldc) = acc0[r];
      *reinterpret_cast<U*>(c + r * ldc + L) = acc1[r];
    }
  }

  int64_t k_, panels_;
  T* data_;
};


template <typename T>
inline T Sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

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
// row at j0, gate stride H) holds the activated gates, on exit their gradients da; dh_in and
// dc_io are the carries, dc updated in place.
template <typename T>
__attribute__((noinline)) void BackwardUnits(int64_t units, int64_t hidden, T* gd,
                                             const T* __restrict c, const T* __restrict c_prev,
                                             const T* __restrict dy, const T* __restrict dh_in,
                                             T* __restrict dc_io) {
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) {
    const T i = gd[j], f = gd[hidden + j], g = gd[2 * hidden + j], o = gd[3 * hidden + j];
    const T dh = dh_in[j] + dy[j];
    const T tc = std::tanh(c[j]);
    const T dc = dc_io[j] + dh * o * (T(1) - tc * tc);
    gd[j] = dc * g * i * (T(1) - i);
    gd[hidden + j] = dc * c_prev[j] * f * (T(1) - f);
    gd[2 * hidden + j] = dc * i * (T(1) - g * g);
    gd[3 * hidden + j] = dh * tc * o * (T(1) - o);
    dc_io[j] = dc * f;
  }
}

// Runs task(phase, part) for every phase in order and every part, on the calling thread and
// on up to parts - 1 pool threads. A task of phase q starts only after every task of phase
// q - 1 has finished.
class PhaseRunner {
 public:
  template <typename Task>
  static void Run(ffi::ThreadPool& pool, int64_t phases, int64_t parts, Task task) {
    auto state = std::make_shared<State>();
    const int64_t total = phases * parts;
    auto work = [state, total, parts, task]() {
      for (;;) {
        const int64_t n = state->next.fetch_add(1, std::memory_order_relaxed);
        if (n >= total) break;
        const int64_t phase = n / parts;
        const int64_t needed = phase * parts;
        for (int spins = 0; state->done.load(std::memory_order_acquire) < needed; ++spins)
          if (spins > 4096) std::this_thread::yield();
        task(phase, n % parts);
        state->done.fetch_add(1, std::memory_order_acq_rel);
      }
    };
    for (int64_t i = 1; i < parts; ++i) {
      auto copy = work;
      pool.Schedule(std::move(copy));
    }
    work();
    for (int spins = 0; state->done.load(std::memory_order_acquire) < total; ++spins)
      if (spins > 4096) std::this_thread::yield();
  }

 private:
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
};

// parts: the call's "parts" attribute; 0 chooses one part per thread of the pool.
int64_t NumParts(ffi::ThreadPool& pool, int64_t hidden, int32_t parts) {
  if (parts > 0) return std::max<int64_t>(1, std::min<int64_t>(parts, hidden));
  // one part per thread, each of at least 16 units, so that no GEMM is too thin
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(threads, hidden / 16));
}

// Per part p: units [Begin(p), Begin(p + 1)).
struct Split {
  int64_t hidden, parts;
  int64_t Begin(int64_t p) const { return hidden * p / parts; }
};

template <ffi::DataType DT>
ffi::Error LstmForward(ffi::ThreadPool pool, ffi::Buffer<DT> w, ffi::Buffer<DT> slab,
                       ffi::Buffer<DT> h0, ffi::Buffer<DT> c0, int32_t reverse, int32_t parts,
                       ffi::ResultBuffer<DT> hs, ffi::ResultBuffer<DT> cs,
                       ffi::ResultBuffer<DT> gates, ffi::ResultBuffer<DT> h_last,
                       ffi::ResultBuffer<DT> c_last) {
  using T = ffi::NativeType<DT>;
  auto dims = slab.dimensions();
  if (dims.size() != 3 || dims[2] % 4 != 0)
    return ffi::Error::InvalidArgument("slab must be [T, B, 4H]");
  const int64_t steps = dims[0], batch = dims[1], width = dims[2], hidden = width / 4;
  if (w.dimensions().size() != 2 || w.dimensions()[0] != width || w.dimensions()[1] != hidden)
    return ffi::Error::InvalidArgument("weight_hh must be [4H, H] for a [T, B, 4H] slab");
  const int64_t state = batch * hidden, slab_step = batch * width;
  const Split split{hidden, NumParts(pool, hidden, parts)};
  const T* wp = w.typed_data();
  const T* xp = slab.typed_data();
  T* hp = hs->typed_data();
  T* cp = cs->typed_data();
  T* gp = gates->typed_data();

  // W_p^T [H, 4 units] (the rows g*H + j, j in part p, of W), packed; and the GEMM's output
  std::vector<std::unique_ptr<PackedMatrix<T>>> packed(split.parts);
  std::vector<std::vector<T>> scratch(split.parts);
  for (int64_t p = 0; p < split.parts; ++p) {
    const int64_t j0 = split.Begin(p), units = split.Begin(p + 1) - j0;
    // column g*units + u of W_p^T is row g*H + j0 + u of W
    packed[p] = std::make_unique<PackedMatrix<T>>(hidden, 4 * units, [&](int64_t k, int64_t c) {
      return wp[((c / units) * hidden + j0 + c % units) * hidden + k];
    });
    scratch[p].resize(batch * packed[p]->padded_columns());
  }

  // gates is computed in place from the slab: XLA passes the slab's own buffer when the
  // slab is not needed after this call (input_output_aliases), else a fresh one to fill
  if (gp != xp) std::memcpy(gp, xp, sizeof(T) * steps * slab_step);

  auto step = [&](int64_t n, int64_t p) {
    const int64_t t = reverse ? steps - 1 - n : n;
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    const bool first = n == 0;
    const T* h_prev = first ? h0.typed_data() : hp + t_prev * state;
    const T* c_prev = first ? c0.typed_data() : cp + t_prev * state;
    const int64_t j0 = split.Begin(p), units = split.Begin(p + 1) - j0;
    T* a = scratch[p].data();  // [B, 4 units (padded)] = h_prev @ W_p^T
    const int64_t lda = packed[p]->padded_columns();
    packed[p]->Multiply(batch, h_prev, hidden, a, lda);
    for (int64_t b = 0; b < batch; ++b)
      ForwardUnits<T>(units, hidden, gp + t * slab_step + b * width + j0, a + b * lda,
                      c_prev + b * hidden + j0, cp + t * state + b * hidden + j0,
                      hp + t * state + b * hidden + j0);
  };
  if (steps > 0) PhaseRunner::Run(pool, steps, split.parts, step);

  const int64_t t_last = reverse ? 0 : steps - 1;
  std::memcpy(h_last->typed_data(), steps ? hp + t_last * state : h0.typed_data(),
              sizeof(T) * state);
  std::memcpy(c_last->typed_data(), steps ? cp + t_last * state : c0.typed_data(),
              sizeof(T) * state);
  return ffi::Error::Success();
}

// Backward, per step t (against the forward's direction), with carries dh, dc:
//   dh += dy_t;  dc_t = dc + dh o (1 - tanh(c)^2)
//   da_i = dc_t g i (1-i), da_f = dc_t c_prev f (1-f), da_g = dc_t i (1-g^2),
//   da_o = dh tanh(c) o (1-o);  dc <- dc_t f;  dh <- da_t @ W_hh
template <ffi::DataType DT>
ffi::Error LstmBackward(ffi::ThreadPool pool, ffi::Buffer<DT> w, ffi::Buffer<DT> gates,
                        ffi::Buffer<DT> cs, ffi::Buffer<DT> c0, ffi::Buffer<DT> d_hs,
                        ffi::Buffer<DT> d_h_last, ffi::Buffer<DT> d_c_last, int32_t reverse,
                        int32_t parts,
                        ffi::ResultBuffer<DT> da, ffi::ResultBuffer<DT> d_h0,
                        ffi::ResultBuffer<DT> d_c0) {
  using T = ffi::NativeType<DT>;
  auto dims = gates.dimensions();
  const int64_t steps = dims[0], batch = dims[1], width = dims[2], hidden = width / 4;
  const int64_t state = batch * hidden, slab_step = batch * width;
  const Split split{hidden, NumParts(pool, hidden, parts)};
  const T* wp = w.typed_data();
  const T* gp = gates.typed_data();
  const T* cp = cs.typed_data();
  const T* dyp = d_hs.typed_data();
  T* dap = da->typed_data();
  T* dh_carry = d_h0->typed_data();  // the carries live in the outputs
  T* dc_carry = d_c0->typed_data();
  std::memcpy(dh_carry, d_h_last.typed_data(), sizeof(T) * state);
  std::memcpy(dc_carry, d_c_last.typed_data(), sizeof(T) * state);
  // da is computed in place from the gates (aliased by XLA when the gates die here)
  if (dap != gp) std::memcpy(dap, gp, sizeof(T) * steps * slab_step);

  // W[:, j0:j1] [4H, units], packed, and dh's columns before they are copied into dh_carry
  std::vector<std::unique_ptr<PackedMatrix<T>>> packed(split.parts);
  std::vector<std::vector<T>> scratch(split.parts);
  for (int64_t p = 0; p < split.parts; ++p) {
    const int64_t j0 = split.Begin(p), units = split.Begin(p + 1) - j0;
    packed[p] = std::make_unique<PackedMatrix<T>>(
        width, units, [&](int64_t k, int64_t c) { return wp[k * hidden + j0 + c]; });
    scratch[p].resize(batch * packed[p]->padded_columns());
  }

  auto phase = [&](int64_t q, int64_t p) {
    const int64_t n = q / 2;
    const int64_t t = reverse ? n : steps - 1 - n;
    const int64_t j0 = split.Begin(p), units = split.Begin(p + 1) - j0;
    T* a = dap + t * slab_step;
    if (q % 2 == 1) {  // dh[:, j0:j1] = da_t @ W[:, j0:j1]
      const int64_t ldo = packed[p]->padded_columns();
      T* out = scratch[p].data();
      packed[p]->Multiply(batch, a, width, out, ldo);
      for (int64_t b = 0; b < batch; ++b)
        std::memcpy(dh_carry + b * hidden + j0, out + b * ldo, sizeof(T) * units);
      return;
    }
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    const T* c_prev = (t_prev < 0 || t_prev >= steps) ? c0.typed_data() : cp + t_prev * state;
    for (int64_t b = 0; b < batch; ++b)
      BackwardUnits<T>(units, hidden, a + b * width + j0, cp + t * state + b * hidden + j0,
                       c_prev + b * hidden + j0, dyp + t * state + b * hidden + j0,
                       dh_carry + b * hidden + j0, dc_carry + b * hidden + j0);
  };
  if (steps > 0) PhaseRunner::Run(pool, 2 * steps, split.parts, phase);
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
