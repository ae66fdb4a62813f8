// What the fused CPU kernels share (included by lstm_cpu.cc, gru_cpu.cc and rnn_cpu.cc; not
// compiled on its own): the per-step GEMM, the phase runner that spreads a call's work over
// XLA's intra-op threads, and the layout of a call's operands.
//
// Layouts (PyTorch's, row-major), for a cell with G gates (LSTM 4, GRU 3, Elman RNN 1):
//   w        [M..., G*H, H]      weight_hh
//   slab     [M..., T, B, G*H]   x_t @ W_ih^T + the biases folded outside the loop
//   h0       [M..., B, H]
//   lengths  [M..., B] int32     sequence b is valid at steps t < lengths[b]
//   hs       [M..., T, B, H]     the state after each step, in time order also when reverse
// M... are the leading dimensions jax.vmap adds (vmap_method="broadcast_all" gives every
// operand the same ones): `members` independent problems in one call, e.g. the members of a
// sweep, each with its own weights.
//
// Lengths: a padded step (t >= lengths[b]) keeps the carry, so hs holds the carried state
// there: the forward direction's final state is its state at lengths[b] - 1, and the reverse
// direction, which meets the padding first, starts from h0 at its own last element. The caller
// zeroes the outputs at padded steps (jaxrnn/fast.py). The backward of a padded step passes the
// state's gradient through unchanged and gives the step's gates no gradient.
//
// Work split: each member's hidden units are cut into P parts. Task (m, p) owns member m's units
// [j0, j1): the gate columns g*H + j of those units, so a forward step is, per task, one GEMM
// h_{t-1} @ W_p^T (W_p = those G(j1-j0) rows of W, packed once per call) and the elementwise
// update of its own units. All tasks of a step must see the whole h_{t-1}: the steps are
// "phases", and a phase starts when the previous one is done. Phase 0 packs the weights.

#ifndef JAXRNN_KERNELS_SUPPORT_CC_
#define JAXRNN_KERNELS_SUPPORT_CC_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
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

// ------------------------------------------------------------------------------ threads

// Runs task(phase, i) for every phase in order and every i < tasks, on the calling thread and
// on pool threads. A task of phase q starts only after every task of phase q - 1 has finished.
// Threads claim tasks from one atomic counter, so the calling thread alone can finish the call
// if the pool's workers are busy: no deadlock, whatever the pool does.
class PhaseRunner {
 public:
  template <typename Task>
  static void Run(ffi::ThreadPool& pool, int64_t phases, int64_t tasks, Task task) {
    auto state = std::make_shared<State>();
    const int64_t total = phases * tasks;
    auto work = [state, total, tasks, task]() {
      for (;;) {
        const int64_t n = state->next.fetch_add(1, std::memory_order_relaxed);
        if (n >= total) break;
        const int64_t phase = n / tasks;
        const int64_t needed = phase * tasks;
        for (int spins = 0; state->done.load(std::memory_order_acquire) < needed; ++spins)
          if (spins > 4096) std::this_thread::yield();
        task(phase, n % tasks);
        state->done.fetch_add(1, std::memory_order_acq_rel);
      }
    };
    const int64_t helpers = std::min<int64_t>(tasks, std::max<int64_t>(1, pool.num_threads()));
    for (int64_t i = 1; i < helpers; ++i) {
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

// ------------------------------------------------------------------------------ layout

// The sizes of one call (see the header).
struct Layout {
  int64_t members = 1, steps = 0, batch = 0, hidden = 0, gates = 1;
  int64_t width() const { return gates * hidden; }
  int64_t state() const { return batch * hidden; }    // one [B, H]
  int64_t states() const { return steps * state(); }  // one member's [T, B, H]
  int64_t slab_step() const { return batch * width(); }
  int64_t slab() const { return steps * slab_step(); }  // one member's [T, B, G*H]
  int64_t weights() const { return width() * hidden; }
};

// Reads the layout from w [M..., G*H, H] and a sequence operand [M..., T, B, G*H] (the slab,
// or the gates of a backward), and checks that h0 and lengths hold M*B*H and M*B elements.
inline ffi::Error ReadLayout(ffi::Span<const int64_t> w, ffi::Span<const int64_t> sequence,
                             size_t h0_elements, size_t lengths_elements, int64_t gates,
                             Layout* out) {
  const size_t rank = sequence.size();
  if (rank < 3 || w.size() + 1 != rank)
    return ffi::Error::InvalidArgument("the slab must be [..., T, B, G*H] and weight_hh "
                                       "[..., G*H, H] with the same leading dimensions");
  Layout layout;
  layout.gates = gates;
  for (size_t d = 0; d + 3 < rank; ++d) {
    if (w[d] != sequence[d])
      return ffi::Error::InvalidArgument("weight_hh and the slab have different leading "
                                         "(vmapped) dimensions");
    layout.members *= sequence[d];
  }
  layout.steps = sequence[rank - 3];
  layout.batch = sequence[rank - 2];
  layout.hidden = w[rank - 2];
  if (sequence[rank - 1] != gates * layout.hidden || w[rank - 3] != gates * layout.hidden)
    return ffi::Error::InvalidArgument("weight_hh must be [" + std::to_string(gates) +
                                       "H, H] and the slab [T, B, " + std::to_string(gates) +
                                       "H]");
  if (h0_elements != static_cast<size_t>(layout.members * layout.state()) ||
      lengths_elements != static_cast<size_t>(layout.members * layout.batch))
    return ffi::Error::InvalidArgument("the initial state must be [B, H] and lengths [B]");
  *out = layout;
  return ffi::Error::Success();
}

// parts: the call's "parts" attribute (parts per member); 0 shares the pool's threads between
// the members, each part at least 16 units so that no GEMM is too thin.
inline int64_t NumParts(ffi::ThreadPool& pool, const Layout& layout, int32_t parts) {
  if (parts > 0) return std::max<int64_t>(1, std::min<int64_t>(parts, layout.hidden));
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t per_member = std::max<int64_t>(1, threads / layout.members);
  return std::max<int64_t>(1, std::min<int64_t>(per_member, layout.hidden / 16));
}

// Task i of a phase: member i / parts, units [Begin(p), Begin(p + 1)) of part p = i % parts.
struct Split {
  int64_t hidden, parts;
  int64_t Member(int64_t task) const { return task / parts; }
  int64_t Begin(int64_t p) const { return hidden * p / parts; }
  int64_t j0(int64_t task) const { return Begin(task % parts); }
  int64_t units(int64_t task) const { return Begin(task % parts + 1) - Begin(task % parts); }
};

// The forward's W_p^T [H, G units] of task (m, p), packed: column g*units + u is row
// g*H + j0 + u of member m's W.
template <typename T>
std::unique_ptr<PackedMatrix<T>> PackForward(const T* w, int64_t hidden, int64_t gates,
                                             int64_t j0, int64_t units) {
  return std::make_unique<PackedMatrix<T>>(hidden, gates * units, [&](int64_t k, int64_t c) {
    return w[((c / units) * hidden + j0 + c % units) * hidden + k];
  });
}

// The backward's W[:, j0:j1] [G*H, units] of task (m, p), packed.
template <typename T>
std::unique_ptr<PackedMatrix<T>> PackBackward(const T* w, int64_t hidden, int64_t gates,
                                              int64_t j0, int64_t units) {
  return std::make_unique<PackedMatrix<T>>(gates * hidden, units, [&](int64_t k, int64_t c) {
    return w[k * hidden + j0 + c];
  });
}

// The step of the n-th phase of a direction's loop (backward loops count from the other end).
inline int64_t StepAt(int64_t n, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - n : n;
}

// Copies a carried state's units at a padded step (src: the previous state's row).
template <typename T>
inline void CarryUnits(int64_t units, const T* src, T* dst) {
  std::memcpy(dst, src, sizeof(T) * units);
}

// The final states: member m's h_T = hs[t_last] (h0 when T = 0); padded steps carry the state,
// so this is each sequence's state after its own last element.
template <typename T>
void CopyFinal(const Layout& layout, bool reverse, const T* seq, const T* first, T* last) {
  const int64_t t_last = reverse ? 0 : layout.steps - 1;
  for (int64_t m = 0; m < layout.members; ++m)
    std::memcpy(last + m * layout.state(),
                layout.steps ? seq + m * layout.states() + t_last * layout.state()
                             : first + m * layout.state(),
                sizeof(T) * layout.state());
}

}  // namespace

#endif  // JAXRNN_KERNELS_SUPPORT_CC_
