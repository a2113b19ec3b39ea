// The normalized LSTM's whole recurrence, forward and backward, as two XLA FFI handlers for CPU
// (model.kernel='cpu'; the Python side is normrnn/kernels/cpu_lstm.py, the maths and the saved
// values are those of normrnn/kernels/fused_lstm.py, which this file follows line by line).
//
// Cooijmans et al. 2016, eqs. 6-8, gate order (g, f, i, o):
//   (g, f, i, o) = N_h(W_h h_{t-1}) + N_x(W_x x_t) + b
//   c_t = sigma(f) c_{t-1} + sigma(i) tanh(g),     h_t = sigma(o) tanh(N_c(c_t))
// with N_x, N_h, N_c each one of: identity (+ optional shift), batch normalization with this
// step's masked batch statistics (training) or given statistics (evaluation, and the backward's
// recomputation), layer normalization. Padded steps (mask 0) hold the carry and output 0.
//
// Why C++: at the sMNIST shape (B=64, H=100, T=784) a step is a [64, 100] x [100, 400] matmul
// and a few hundred thousand flops of elementwise work; XLA runs each step as dozens of small
// kernels whose dispatch costs more than their arithmetic. Here a step is one BLAS call and
// a handful of vectorized loops over data that stays in cache. Matmuls go to the OpenBLAS of
// the scipy-openblas32 package; its sgemm/dgemm entry points are handed over once from Python
// (normrnn_set_blas), so this library links against nothing but libc/libm.
//
// All arrays are row-major and time-major: sequences [T, B, F], per-step statistics [T, F].
// An optional array is passed with zero elements when absent.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// CBLAS constants (the values every CBLAS uses) and the two entry points.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                         int, float, float*, int);
using DgemmFn = void (*)(int, int, int, int, int, int, double, const double*, int,
                         const double*, int, double, double*, int);
SgemmFn g_sgemm = nullptr;
DgemmFn g_dgemm = nullptr;

// C = alpha op(A) op(B) + beta C, row-major, op(X) = X or X^T; A is m x k after op, B k x n;
// lda, ldb, ldc: the row strides (a block of columns of a wider matrix).
inline void Gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b,
                 int ldb, float beta, float* c, int ldc) {
  if (m == 0 || n == 0) return;
  g_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, m, n, k, 1.0f, a, lda, b,
          ldb, beta, c, ldc);
}
inline void Gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc) {
  if (m == 0 || n == 0) return;
  g_dgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, m, n, k, 1.0, a, lda, b,
          ldb, beta, c, ldc);
}
// The same for whole (contiguous) matrices.
template <typename T>
inline void Gemm(bool ta, bool tb, int m, int n, int k, const T* a, const T* b, T beta, T* c) {
  Gemm(ta, tb, m, n, k, a, ta ? m : k, b, tb ? k : n, beta, c, n);
}

// Large per-step arrays (the saved h_{t-1}, c_{t-1}, W_h h_{t-1}: 150 MB at PTB's shape) are
// fresh memory at every call, and the kernel's first write to each 4 KB page faults (measured at
// PTB: a tenth of the forward's time). Asked to back them with 2 MB pages instead (Linux
// transparent huge pages in "madvise" mode; PyTorch's THP_MEM_ALLOC_ENABLE does the same for its
// large CPU tensors), they fault 512 times less often. Advice only: no value changes, and where
// the kernel or the system does not support it nothing happens.
inline void AdviseHugePages(const void* data, long bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = 2 << 20;
  const auto begin = (reinterpret_cast<std::uintptr_t>(data) + kHuge - 1) / kHuge * kHuge;
  const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) / kHuge * kHuge;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// ---------------------------------------------------------------------------------------------
// The recurrent matmuls. Every step multiplies by the same W_h (forward: h_{t-1} W_h; backward:
// dL/da_h W_h^T) and, in the step, the input term by W_x. A BLAS call re-packs its operands into
// its blocked layout at every call, which for a step's few dozen rows costs about a fifth of the
// matmul. So a `Weight` packs (its thread's block of) the matrix ONCE per call, into panels of
// 32 columns [panel][k][32], and multiplies by it with a microkernel of 8 rows x 32 columns
// (16 AVX-512 accumulators; k in blocks of 1024 so that the rows' block stays in L2). The
// step's rows are read in place, each of the 8 a stream of its own: packing them as
// [8-row block][k][8] first (a scalar transpose) cost more than it saved (PTB none step
// 441 -> 434 ms, sMNIST none 64-68 -> 62-63 ms without it, alone in a process). Measured on
// this project's AVX-512 CPU, one matmul single-threaded, with the rows still packed
// (docs/benchmarks.md): PTB's [64, 1000] x [1000, 2000] 1.38 -> 1.08 ms, [64, 4000] x
// [4000, 500] (transposed) 1.37 -> 1.19 ms, sMNIST's [32, 100] x [100, 400] 14 -> 11 us (BLAS
// -> packed). Float32 where the build targets AVX-512 (-march, setup.py); float64 and other
// CPUs call BLAS.
template <typename T>
class Weight {
 public:
  // B = W[:, :n] (W row-major, k rows with row stride ldw) or, transposed, B = W[:n, :]^T (W's
  // first n rows, k = their length, row stride ldw); `w` points at the block's first element.
  Weight(const T* w, int ldw, int k, int n, bool trans)
      : w_(w), ldw_(ldw), k_(k), n_(n), trans_(trans) {}
  // C [m, n] (row stride ldc) = A [m, k] (row stride lda) B.
  void Multiply(int m, const T* a, int lda, T* c, int ldc) {
    Gemm(false, trans_, m, n_, k_, a, lda, w_, ldw_, T(0), c, ldc);
  }

 private:
  const T* w_;
  int ldw_, k_, n_;
  bool trans_;
};

#if defined(__AVX512F__)
template <>
class Weight<float> {
 public:
  Weight(const float* w, int ldw, int k, int n, bool trans)
      : k_(k), n_(n), panels_((n + 31) / 32) {
    b_ = Aligned(packed_, long(panels_) * k * 32);
    for (int q = 0; q < panels_; ++q) {
      float* dst = b_ + long(q) * k * 32;
      const int c0 = q * 32, nc = std::min(32, n - c0);
      std::fill(dst, dst + long(k) * 32, 0.0f);  // the last panel's columns past n: zero
      if (trans) {
        for (int c = 0; c < nc; ++c) {
          const float* src = w + long(c0 + c) * ldw;
          for (int kk = 0; kk < k; ++kk) dst[long(kk) * 32 + c] = src[kk];
        }
      } else {
        for (int kk = 0; kk < k; ++kk) {
          const float* src = w + long(kk) * ldw + c0;
          std::copy(src, src + nc, dst + long(kk) * 32);
        }
      }
    }
  }

  void Multiply(int m, const float* a, int lda, float* c, int ldc) {
    const int k = k_, blocks = (m + 7) / 8;
    for (int k0 = 0; k0 < k; k0 += kBlockK) {
      const int kc = std::min(kBlockK, k - k0);
      for (int q = 0; q < panels_; ++q) {
        const float* bq = b_ + long(q) * k * 32 + long(k0) * 32;
        const int c0 = q * 32, nc = std::min(32, n_ - c0);
        const __mmask16 m0 = nc >= 16 ? 0xFFFF : (1u << nc) - 1;
        const __mmask16 m1 = nc >= 32 ? 0xFFFF : nc > 16 ? (1u << (nc - 16)) - 1 : 0;
        for (int r = 0; r < blocks; ++r)
          Tile(kc, a + long(r) * 8 * lda + k0, lda, bq, std::min(8, m - r * 8), m0, m1, k0 > 0,
               c + long(r) * 8 * ldc + c0, ldc);
      }
    }
  }

 private:
  static constexpr int kBlockK = 1024;
  // One tile: C[:rows, :32] (+)= A B over kc steps of k, A's rows read where they are (row
  // stride lda; a tile's 8 rows x kc stay in L1/L2 while its row of panels passes), B as
  // [kc][32]. Not inlined, and every accumulator index a constant: so that GCC keeps the 16
  // accumulators in registers (inlined into the loops above, it kept them on the stack: PTB's
  // step took 978 instead of 594 ms).
  __attribute__((noinline)) static void Tile(int kc, const float* __restrict a, int lda,
                                             const float* __restrict b, int rows, __mmask16 m0,
                                             __mmask16 m1, bool add, float* c, int ldc) {
    const float* ar[8];  // rows past `rows` read row 0 again: computed, never stored
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) ar[i] = a + long(i < rows ? i : 0) * lda;
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int kk = 0; kk < kc; ++kk) {
      const __m512 b0 = _mm512_load_ps(b + kk * 32), b1 = _mm512_load_ps(b + kk * 32 + 16);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const __m512 av = _mm512_set1_ps(ar[i][kk]);
        acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      if (i >= rows) break;
      float* ci = c + long(i) * ldc;
      if (add) {  // later blocks of k add to the earlier ones'
        acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, ci));
        acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, ci + 16));
      }
      _mm512_mask_storeu_ps(ci, m0, acc[i][0]);
      _mm512_mask_storeu_ps(ci + 16, m1, acc[i][1]);
    }
  }
  // `size` floats of `v`, starting at a 64-byte boundary.
  static float* Aligned(std::vector<float>& v, long size) {
    v.resize(size + 16);
    const auto address = reinterpret_cast<std::uintptr_t>(v.data());
    return v.data() + ((64 - address % 64) % 64) / sizeof(float);
  }
  int k_, n_, panels_;
  std::vector<float> packed_;
  float* b_;
};
#endif

enum Kind : int64_t { kIdentity = 0, kBatch = 1, kLayer = 2, kStreaming = 3 };

template <typename T>
inline T Sigmoid(T x) {
  // Clamped: this file is compiled with -ffast-math (vectorized exp), which assumes no inf, so
  // exp(-x) must not overflow (float32 saturating pre-activations gave NaN). sigma(+-80) is 1 and
  // 2e-35 in both float types: the clamp changes no value beyond rounding.
  x = std::min(std::max(x, T(-80)), T(80));
  return T(1) / (T(1) + std::exp(-x));
}
template <typename T>
inline T Tanh(T x) {  // clamped for the same reason; tanh(+-40) is +-1 in both float types
  return std::tanh(std::min(std::max(x, T(-40)), T(40)));
}

// ---------------------------------------------------------------------------------------------
// Threads. Every row of the batch runs its own recurrence; rows only meet in the batch
// statistics of BN sites. So each call splits the batch into contiguous blocks of rows, one per
// thread, and the threads meet at a barrier only where a BN site combines its per-thread sums
// (2 per BN site per step forward, 1 backward). BLAS runs single-threaded inside each thread.
//
// The recurrent matmuls may instead be split by columns (`columns`, chosen by cpu_lstm.py): each
// thread multiplies ALL rows by its block of W_h's columns (forward: of W_h h_{t-1}; backward:
// of dL/dh_{t-1} = dL/da_h W_h^T, and of dW_h), through shared [B, .] buffers, and the rest of
// the step stays split by rows; two more barriers per step. Why: with large H a row block's
// matmul is thin ([32, 1000] x [1000, 4000] at PTB) and every thread streams all of W_h through
// its cache each step; a column block halves what each thread reads and doubles the rows per
// BLAS call (measured at PTB: forward matmul 2.6 -> 1.6 ms per step on 2 threads). With small H
// (sMNIST) the extra barriers cost more than the matmuls gain.

// A barrier for the `n` threads of one call: spins briefly (steps are microseconds apart), then
// yields (more threads than free cores must still make progress).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void Wait() {
    if (n_ == 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spin = 0; gen_.load(std::memory_order_acquire) == gen; ++spin)
      if (spin > 4000) std::this_thread::yield();
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// Persistent worker threads (created on first use, sleeping between calls).
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // never destroyed: workers may outlive static teardown
    return *pool;
  }
  // Runs fn(0..n-1), fn(0) on the calling thread; returns when all are done.
  void Run(int n, const std::function<void(int)>& fn) {
    if (n <= 1) {
      fn(0);
      return;
    }
    std::unique_lock<std::mutex> call(call_mu_);  // one call at a time
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int>(workers_.size()) < n - 1) {
        const int id = static_cast<int>(workers_.size()) + 1;
        workers_.emplace_back([this, id] { Work(id); });
      }
      fn_ = &fn;
      active_ = n;
      pending_ = n - 1;
      ++job_;
    }
    wake_.notify_all();
    fn(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return pending_ == 0; });
  }

 private:
  void Work(int id) {
    long seen = 0;
    for (;;) {
      const std::function<void(int)>* fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return job_ != seen; });
        seen = job_;
        if (id >= active_) continue;
        fn = fn_;
      }
      (*fn)(id);
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_.notify_one();
    }
  }
  std::mutex call_mu_, mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* fn_ = nullptr;
  long job_ = 0;
  int active_ = 0, pending_ = 0;
};

// The team of one call: its barrier and two sets (alternating) of per-thread partial sums, so
// that a thread may start the next reduction while another still reads the previous one.
template <typename T>
struct Team {
  Team(int n, int width) : n(n), bar(n) {
    for (auto& b : buf) b.assign(long(n) * width, T(0));
    this->width = width;
  }
  int n, width;
  Barrier bar;
  std::vector<T> buf[2];
};

// One thread's view: its rows [r0, r0 + rows) and its position in the alternation.
template <typename T>
struct Member {
  Team<T>* team;
  int tid, r0, rows, phase = 0;
  T* Partial() { return team->buf[phase].data() + long(tid) * team->width; }
  // After writing Partial(): waits for all, then sums the threads' partials (first `f` values)
  // into out, in thread order (every thread gets the same bits).
  void Reduce(int f, T* __restrict out) {
    team->bar.Wait();
    const T* all = team->buf[phase].data();
    std::fill(out, out + f, T(0));
    for (int k = 0; k < team->n; ++k)
      for (int j = 0; j < f; ++j) out[j] += all[long(k) * team->width + j];
    phase ^= 1;
  }
};

// One normalization site: its kind, width and parameters, the statistics it normalizes with
// (per step, [T, F]: evaluation, or the backward's recomputation), what it writes.
template <typename T>
struct Site {
  Kind kind = kIdentity;
  int f = 0;
  T eps = T(0);
  const T* gamma = nullptr;   // [F] or null (gain 1)
  const T* beta = nullptr;    // [F] or null (no shift)
  const T* mean = nullptr;    // [T, F] given statistics (null: batch statistics, training)
  const T* r = nullptr;       // [T, F] 1 / sqrt(var + eps)
  T* out_mean = nullptr;      // [T, F] this batch's moments (training forward; thread 0 writes)
  T* out_var = nullptr;
  const T* dmean = nullptr;   // [T, F] cotangents of the returned moments, or null
  const T* dvar = nullptr;
  T* dstat_mean = nullptr;    // [T, F] cotangents of the given statistics (evaluation), or null
  T* dstat_r = nullptr;
  // Streaming normalization (normrnn/norms/streaming.py): `mean` and `r` hold the long-term
  // table (mu_L, var_L) [F], the same at every step and in both modes; `dstat_mean`/`dstat_r`
  // their cotangents [F]. The per-sequence running sums (n [B], s1, s2 [B, F]) are carried:
  const T* state0[3] = {nullptr, nullptr, nullptr};  // initial n, s1, s2
  T* state_out[3] = {nullptr, nullptr, nullptr};     // final n, s1, s2
  // The backward starts from the final sums and walks them back, s_{t-1} = s_t - a_t m_t (no
  // per-step copies: at sMNIST they were 360 MB written and read again; the subtraction's
  // rounding is that of the sums themselves, ~1e-7 relative per step in float32).
  const T* state_final[3] = {nullptr, nullptr, nullptr};  // backward: n, s1, s2 after step T
  const T* dstate_out[3] = {nullptr, nullptr, nullptr};   // backward: d final sums (n: unused)
  T* dstate0[3] = {nullptr, nullptr, nullptr};       // backward: d initial sums (n: zero)
  const T* batch_mean = nullptr;  // backward: this batch's mean per step [T, F] (moments' term)
  T lam = T(0);                   // weight of the short-term statistics
};

// One thread's scratch for the sites and its accumulated parameter cotangents.
// A streaming site's per-thread state: the running sums of this thread's rows (in the backward:
// as after step t, recomputed from the saved ones), their carried cotangents, and the long-term
// table's cotangents.
template <typename T>
struct Stream {
  std::vector<T> n, s1, s2, ds1, ds2, dmu_l, dvar_l;
};

// `mean[k]`, `r[k]`: site k's statistics of the current step (BN: the mean and 1 / sqrt(var +
// eps) it normalized with, which the backward's SiteBackward reads after the step's other sites
// were recomputed; streaming: this batch's moments, mean and variance).
template <typename T>
struct Scratch {
  std::vector<T> s, zero;
  std::vector<T> mean[3], r[3];
  std::vector<T> dgamma[3], dbeta[3];
  Stream<T> stream[3];
  explicit Scratch(int g, int h) : s(2 * g), zero(g, T(0)) {
    for (int k = 0; k < 3; ++k) {
      mean[k].assign(k == 2 ? h : g, T(0));
      r[k].assign(k == 2 ? h : g, T(0));
      dgamma[k].assign(k == 2 ? h : g, T(0));
      dbeta[k].assign(k == 2 ? h : g, T(0));
    }
  }
};

// This batch's masked moments of `a` at step t (BN's, and streaming's training moments): the
// whole batch's mean and (two-pass) variance into mean, var [F].
template <typename T>
void BatchMoments(Member<T>& me, int f, const T* __restrict a, const float* __restrict m, T n,
                  T* __restrict mean, T* __restrict var) {
  const int b = me.rows;
  T* __restrict part = me.Partial();
  std::fill(part, part + f, T(0));
  for (int i = 0; i < b; ++i) {
    const T mi = m[i];
    const T* __restrict ai = a + long(i) * f;
    for (int j = 0; j < f; ++j) part[j] += mi * ai[j];
  }
  me.Reduce(f, mean);
  for (int j = 0; j < f; ++j) mean[j] /= n;
  part = me.Partial();
  std::fill(part, part + f, T(0));
  for (int i = 0; i < b; ++i) {
    const T mi = m[i];
    const T* __restrict ai = a + long(i) * f;
    for (int j = 0; j < f; ++j) part[j] += mi * (ai[j] - mean[j]) * (ai[j] - mean[j]);
  }
  me.Reduce(f, var);
  for (int j = 0; j < f; ++j) var[j] /= n;
}

// Streaming: the normalizer of one unit from its running sums after this step (inv_safe =
// 1 / max(n, 1)); `diff` is the variance before its clamp at 0.
template <typename T>
struct StreamStats {
  T mu, diff, r;
};
template <typename T>
inline StreamStats<T> StreamAt(T lam, T inv_safe, T s1, T s2, T mu_l, T var_l, T eps) {
  StreamStats<T> z;
  z.mu = lam * s1 * inv_safe + (T(1) - lam) * mu_l;
  const T second = lam * s2 * inv_safe + (T(1) - lam) * (var_l + mu_l * mu_l);
  z.diff = second - z.mu * z.mu;
  z.r = T(1) / std::sqrt(std::fmax(z.diff, T(0)) + eps);
  return z;
}

// One row's running sums across a step: s1 += m a, s2 += m a^2 (m = the row's mask; the
// backward walks them back with -m, exactly: negation does not round).
template <typename T>
inline void AdvanceSums(int f, const T* __restrict a, T m, T* __restrict s1, T* __restrict s2) {
  for (int j = 0; j < f; ++j) {
    s1[j] += a[j] * m;
    s2[j] += a[j] * a[j] * m;
  }
}

// Streaming forward on this thread's rows: training moments (thread 0 writes them), the sums
// entering the step saved (forward) or read back (backward), the sums advanced, the output.
template <typename T>
void StreamForward(const Site<T>& s, int k, Stream<T>& st, Scratch<T>& w, Member<T>& me, int t,
                   int batch, const T* __restrict a, const float* __restrict m, T n,
                   T* __restrict out) {
  const int f = s.f, b = me.rows;
  if (s.out_mean) {
    BatchMoments(me, f, a, m, n, w.mean[k].data(), w.r[k].data());
    if (me.tid == 0) {
      std::copy(w.mean[k].begin(), w.mean[k].end(), s.out_mean + long(t) * f);
      std::copy(w.r[k].begin(), w.r[k].end(), s.out_var + long(t) * f);
    }
  }
  const T* __restrict beta = s.beta ? s.beta : w.zero.data();
  const T* __restrict gamma = s.gamma;
  const T* __restrict mu_l = s.mean;
  const T* __restrict var_l = s.r;
  const T lam = s.lam, eps = s.eps;
  const bool advance = s.state_final[0] == nullptr;  // backward: st already holds s_t
  for (int i = 0; i < b; ++i) {
    const T mi = m[i];
    if (advance) st.n[i] += mi;
    const T inv_safe = T(1) / std::max(st.n[i], T(1));
    const T* __restrict ai = a + long(i) * f;
    T* __restrict s1 = st.s1.data() + long(i) * f;
    T* __restrict s2 = st.s2.data() + long(i) * f;
    T* __restrict oi = out + long(i) * f;
    if (advance) AdvanceSums(f, ai, mi, s1, s2);
    for (int j = 0; j < f; ++j) {
      const StreamStats<T> z = StreamAt(lam, inv_safe, s1[j], s2[j], mu_l[j], var_l[j], eps);
      oi[j] = gamma[j] * (ai[j] - z.mu) * z.r + beta[j];
    }
  }
}

// One row of StreamBackward (noinline, every pointer restrict: so that GCC vectorizes it).
template <typename T>
__attribute__((noinline)) void StreamBackwardRow(
    int f, T lam, T eps, T mi, T inv_safe, const T* __restrict ai, const T* __restrict di,
    const T* __restrict s1, const T* __restrict s2, const T* __restrict gamma,
    const T* __restrict mu_l, const T* __restrict var_l, T* __restrict dgamma,
    T* __restrict dbeta, T* __restrict dmu_l, T* __restrict dvar_l, T* __restrict ds1,
    T* __restrict ds2, T* __restrict dai) {
  for (int j = 0; j < f; ++j) {
    const StreamStats<T> z = StreamAt(lam, inv_safe, s1[j], s2[j], mu_l[j], var_l[j], eps);
    const T g = gamma[j], dy = di[j], centered = ai[j] - z.mu;
    dgamma[j] += dy * centered * z.r;
    dbeta[j] += dy;
    const T dvar = T(-0.5) * g * centered * dy * z.r * z.r * z.r;
    const T dsecond = std::fmax(z.diff, T(0)) == z.diff ? dvar : T(0);  // the clamp's gradient
    const T dmu = -g * z.r * dy - T(2) * z.mu * dsecond;
    dmu_l[j] += (T(1) - lam) * (dmu + T(2) * mu_l[j] * dsecond);
    dvar_l[j] += (T(1) - lam) * dsecond;
    ds1[j] += lam * dmu * inv_safe;
    ds2[j] += lam * dsecond * inv_safe;
    dai[j] = g * z.r * dy + mi * (ds1[j] + T(2) * ai[j] * ds2[j]);
  }
}

// Streaming backward on this thread's rows (after StreamForward recomputed step t): the
// gradient through the normalizer, the running sums (their cotangents are carried back through
// time: s_t = s_{t-1} + a_t m_t) and, in training, this batch's returned moments.
template <typename T>
void StreamBackward(const Site<T>& s, int k, Stream<T>& st, Scratch<T>& w, int t, bool train,
                    int b, const T* __restrict a, const float* __restrict m, T n,
                    const T* __restrict dout, T* __restrict da) {
  const int f = s.f;
  const T lam = s.lam, eps = s.eps;
  const T* __restrict gamma = s.gamma;
  const T* __restrict mu_l = s.mean;
  const T* __restrict var_l = s.r;
  T* __restrict dgamma = w.dgamma[k].data();
  T* __restrict dbeta = w.dbeta[k].data();
  T* __restrict dmu_l = st.dmu_l.data();
  T* __restrict dvar_l = st.dvar_l.data();
  for (int i = 0; i < b; ++i) {
    const T mi = m[i];
    const T inv_safe = T(1) / std::max(st.n[i], T(1));
    const T* __restrict ai = a + long(i) * f;
    const T* __restrict di = dout + long(i) * f;
    const T* __restrict s1 = st.s1.data() + long(i) * f;
    const T* __restrict s2 = st.s2.data() + long(i) * f;
    T* __restrict ds1 = st.ds1.data() + long(i) * f;
    T* __restrict ds2 = st.ds2.data() + long(i) * f;
    T* __restrict dai = da + long(i) * f;
    StreamBackwardRow(f, lam, eps, mi, inv_safe, ai, di, s1, s2, gamma, mu_l, var_l, dgamma,
                      dbeta, dmu_l, dvar_l, ds1, ds2, dai);
    // Back to the sums entering step t.
    st.n[i] -= mi;
    AdvanceSums(f, ai, -mi, st.s1.data() + long(i) * f, st.s2.data() + long(i) * f);
  }
  if (train && s.dmean) {  // the returned batch moments (mean, two-pass variance)
    const T inv_n = T(1) / n;
    const T* __restrict bmean = s.batch_mean + long(t) * f;
    const T* __restrict dmean = s.dmean + long(t) * f;
    const T* __restrict dvar = s.dvar + long(t) * f;
    for (int i = 0; i < b; ++i) {
      const T mi = m[i] * inv_n;
      const T* __restrict ai = a + long(i) * f;
      T* __restrict dai = da + long(i) * f;
      for (int j = 0; j < f; ++j) dai[j] += mi * (dmean[j] + T(2) * (ai[j] - bmean[j]) * dvar[j]);
    }
  }
}

// Layer norm's statistics of one row of f features: its mean and 1 / sqrt(var + eps).
template <typename T>
inline void RowStats(const T* __restrict a, int f, T eps, T* mu, T* r) {
  T m = 0, var = 0;
  for (int j = 0; j < f; ++j) m += a[j];
  m /= f;
  for (int j = 0; j < f; ++j) var += (a[j] - m) * (a[j] - m);
  *mu = m;
  *r = T(1) / std::sqrt(var / f + eps);
}

// out = N(a) for step t on this thread's rows (`a`, `out`, `m` point at its first row). `n` =
// max(valid rows of the whole batch, 1). BN in training without given statistics computes the
// masked moments of the whole batch (two passes, as fused_lstm.py) and thread 0 writes them to
// out_mean/out_var[t] (forward; the backward recomputes them where it was given none).
template <typename T>
void SiteForward(const Site<T>& s, int k, Scratch<T>& w, Member<T>& me, int t, int batch,
                 const T* __restrict a, const float* __restrict m, T n, T* __restrict out) {
  const int f = s.f, b = me.rows;
  if (s.kind == kStreaming) {
    StreamForward(s, k, w.stream[k], w, me, t, batch, a, m, n, out);
    return;
  }
  const T* __restrict beta = s.beta ? s.beta : w.zero.data();
  const T* __restrict gamma = s.gamma;
  if (s.kind == kIdentity) {
    for (int i = 0; i < b; ++i) {
      const T* __restrict ai = a + long(i) * f;
      T* __restrict oi = out + long(i) * f;
      for (int j = 0; j < f; ++j) oi[j] = ai[j] + beta[j];
    }
    return;
  }
  if (s.kind == kBatch) {
    T* __restrict mean = w.mean[k].data();
    T* __restrict r = w.r[k].data();
    if (s.mean == nullptr) {
      BatchMoments(me, f, a, m, n, mean, r);  // r: the variance, then r
      if (me.tid == 0 && s.out_mean) {
        std::copy(mean, mean + f, s.out_mean + long(t) * f);
        std::copy(r, r + f, s.out_var + long(t) * f);
      }
      for (int j = 0; j < f; ++j) r[j] = T(1) / std::sqrt(r[j] + s.eps);
    } else {
      std::copy(s.mean + long(t) * f, s.mean + long(t + 1) * f, mean);
      std::copy(s.r + long(t) * f, s.r + long(t + 1) * f, r);
    }
    for (int i = 0; i < b; ++i) {
      const T* __restrict ai = a + long(i) * f;
      T* __restrict oi = out + long(i) * f;
      for (int j = 0; j < f; ++j) oi[j] = gamma[j] * (ai[j] - mean[j]) * r[j] + beta[j];
    }
    return;
  }
  // Layer norm: statistics of each row over its features.
  for (int i = 0; i < b; ++i) {
    const T* __restrict ai = a + long(i) * f;
    T* __restrict oi = out + long(i) * f;
    T mu, ri;
    RowStats(ai, f, s.eps, &mu, &ri);
    for (int j = 0; j < f; ++j) oi[j] = gamma[j] * (ai[j] - mu) * ri + beta[j];
  }
}

// da = dL/da from dout = dL/d(out) for step t on this thread's rows (`a`: the site's input
// again), accumulating the parameter cotangents of site `k` in the thread's scratch and writing
// the statistics cotangents (evaluation, thread 0); the formulas of fused_lstm.py,
// _site_backward. BN uses the step's given statistics (s.mean, s.r), or where none were given
// those SiteForward just recomputed for this step, and the whole batch's sums.
template <typename T>
void SiteBackward(const Site<T>& s, int k, Scratch<T>& w, Member<T>& me, int t, bool train,
                  const T* __restrict a, const float* __restrict m, T n,
                  const T* __restrict dout, T* __restrict da) {
  const int f = s.f, b = me.rows;
  if (s.kind == kStreaming) {
    StreamBackward(s, k, w.stream[k], w, t, train, b, a, m, n, dout, da);
    return;
  }
  T* __restrict dgamma = w.dgamma[k].data();
  T* __restrict dbeta = w.dbeta[k].data();
  if (s.kind == kIdentity) {
    for (int i = 0; i < b; ++i) {
      const T* __restrict di = dout + long(i) * f;
      for (int j = 0; j < f; ++j) dbeta[j] += di[j];
    }
    std::copy(dout, dout + long(b) * f, da);
    return;
  }
  const T* __restrict gamma = s.gamma;
  if (s.kind == kLayer) {
    for (int i = 0; i < b; ++i) {
      const T* __restrict ai = a + long(i) * f;
      const T* __restrict di = dout + long(i) * f;
      T* __restrict dai = da + long(i) * f;
      T mu, ri;
      RowStats(ai, f, s.eps, &mu, &ri);
      T mdy = 0, mdyy = 0;
      for (int j = 0; j < f; ++j) {
        const T y = (ai[j] - mu) * ri, dy = di[j] * gamma[j];
        dbeta[j] += di[j];
        dgamma[j] += di[j] * y;
        mdy += dy;
        mdyy += dy * y;
      }
      mdy /= f;
      mdyy /= f;
      for (int j = 0; j < f; ++j)
        dai[j] = ri * (di[j] * gamma[j] - mdy - (ai[j] - mu) * ri * mdyy);
    }
    return;
  }
  // Batch norm: s1 = sum over the whole batch of dout, s2 = of dout * y.
  const T* __restrict mean = s.mean ? s.mean + long(t) * f : w.mean[k].data();
  const T* __restrict r = s.r ? s.r + long(t) * f : w.r[k].data();
  T* __restrict part = me.Partial();
  std::fill(part, part + 2 * f, T(0));
  for (int i = 0; i < b; ++i) {
    const T* __restrict ai = a + long(i) * f;
    const T* __restrict di = dout + long(i) * f;
    T* __restrict p2 = part + f;
    for (int j = 0; j < f; ++j) {
      part[j] += di[j];
      p2[j] += di[j] * (ai[j] - mean[j]) * r[j];
    }
  }
  T* __restrict s1 = w.s.data();
  me.Reduce(2 * f, s1);
  const T* __restrict s2 = s1 + f;
  if (me.tid == 0)
    for (int j = 0; j < f; ++j) {
      dgamma[j] += s2[j];
      dbeta[j] += s1[j];
    }
  if (!train) {  // given statistics: an affine map of a
    if (s.dstat_mean && me.tid == 0)
      for (int j = 0; j < f; ++j) {
        s.dstat_mean[long(t) * f + j] = -gamma[j] * r[j] * s1[j];
        s.dstat_r[long(t) * f + j] = gamma[j] * s2[j] / r[j];
      }
    for (int i = 0; i < b; ++i) {
      const T* __restrict di = dout + long(i) * f;
      T* __restrict dai = da + long(i) * f;
      for (int j = 0; j < f; ++j) dai[j] = di[j] * gamma[j] * r[j];
    }
    return;
  }
  // The classic BN gradient, masked: every row's y depends on the valid rows' mean and r.
  const T inv_n = T(1) / n;
  const T* __restrict dmean = s.dmean ? s.dmean + long(t) * f : nullptr;
  const T* __restrict dvar = s.dvar ? s.dvar + long(t) * f : nullptr;
  for (int i = 0; i < b; ++i) {
    const T mi = m[i] * inv_n;
    const T* __restrict ai = a + long(i) * f;
    const T* __restrict di = dout + long(i) * f;
    T* __restrict dai = da + long(i) * f;
    for (int j = 0; j < f; ++j) {
      const T y = (ai[j] - mean[j]) * r[j];
      dai[j] = r[j] * (di[j] * gamma[j] - mi * gamma[j] * (s1[j] + y * s2[j]));
    }
    if (dmean)
      for (int j = 0; j < f; ++j) {
        const T y = (ai[j] - mean[j]) * r[j];
        dai[j] += mi * (dmean[j] + T(2) * y * dvar[j] / r[j]);
      }
  }
}

// Buffers as typed pointers; an array with zero elements is "absent" (nullptr).
template <typename T>
const T* In(const ffi::AnyBuffer& b) {
  return b.element_count() ? static_cast<const T*>(b.untyped_data()) : nullptr;
}
template <typename T>
T* Out(ffi::Result<ffi::AnyBuffer>& b) {
  return b->element_count() ? static_cast<T*>(b->untyped_data()) : nullptr;
}

// The argument layout shared by both handlers (see cpu_lstm.py, which builds it):
//   0 kernel_h [H, G]   1 kernel_x [D, G] (absent: input term hoisted)   2 bias [G]
//   3-5 gamma of the input, recurrent, cell sites   6-8 their beta
//   9 h0 [B, H]   10 c0 [B, H]   11 inputs [T, B, D] (or the normalized input term [T, B, G])
//   12 mask [T, B] float32   13-15 per-step mean of the three sites [T, F]   16-18 their r
//   (a BN site in training: absent in the forward, and in the backward where it recomputes them)
struct Shape {
  int t, b, h, g, d;
  bool in_loop;
  bool identity;  // every site an identity (none, weight): nothing normalizes
};

template <typename T>
Shape SetSites(const ffi::RemainingArgs& args, const int64_t kinds[3], double eps,
               Site<T> sites[3]) {
  auto arg = [&](int i) { return args.get<ffi::AnyBuffer>(i).value(); };
  Shape sh;
  auto kh = arg(0).dimensions();
  auto xs = arg(11).dimensions();
  sh.h = static_cast<int>(kh[0]);
  sh.g = static_cast<int>(kh[1]);
  sh.t = static_cast<int>(xs[0]);
  sh.b = static_cast<int>(xs[1]);
  sh.d = static_cast<int>(xs[2]);
  sh.in_loop = arg(1).element_count() > 0;
  sh.identity = kinds[0] == kIdentity && kinds[1] == kIdentity && kinds[2] == kIdentity;
  for (int k = 0; k < 3; ++k) {
    Site<T>& s = sites[k];
    s.kind = static_cast<Kind>(kinds[k]);
    s.f = k == 2 ? sh.h : sh.g;
    s.eps = static_cast<T>(eps);
    s.gamma = In<T>(arg(3 + k));
    s.beta = In<T>(arg(6 + k));
    s.mean = In<T>(arg(13 + k));
    s.r = In<T>(arg(16 + k));
  }
  return sh;
}

// c = sigma(f) c_prev + sigma(i) tanh(g) for one row of h units, from its activations `a` =
// (tanh g, sigma f, sigma i, sigma o).
template <typename T>
inline void CellRow(int h, const T* __restrict a, const T* __restrict c_prev, T* __restrict c) {
  const T* __restrict f = a + h;
  const T* __restrict in = a + 2 * h;
  for (int j = 0; j < h; ++j) c[j] = f[j] * c_prev[j] + in[j] * a[j];
}

// The per-step elementwise part of the cell for one row: acts = (tanh g, sigma f, sigma i,
// sigma o) of pre = xn + hn + bias, and c = sigma(f) c_prev + sigma(i) tanh(g). One call per row
// (noinline): inlined into the loop over rows, GCC vectorizes across rows with gathers instead
// of along the row.
template <typename T>
__attribute__((noinline)) void GateRow(int h, const T* __restrict x, const T* __restrict y,
                                       const T* __restrict bias, const T* __restrict c_prev,
                                       T* __restrict a, T* __restrict c) {
  // Offsets as separate pointers: indexing a[h + j] made GCC emit gathers.
  for (int j = 0; j < h; ++j) a[j] = Tanh(x[j] + y[j] + bias[j]);
  const T* __restrict x3 = x + h;
  const T* __restrict y3 = y + h;
  const T* __restrict b3 = bias + h;
  T* __restrict a3 = a + h;
  for (int j = 0; j < 3 * h; ++j) a3[j] = Sigmoid(x3[j] + y3[j] + b3[j]);
  CellRow(h, a, c_prev, c);
}

template <typename T>
void Gates(int b, int h, const T* xn, const T* hn, const T* bias, const T* c_prev, T* acts,
           T* c) {
  const long g = 4 * h;
  for (int i = 0; i < b; ++i)
    GateRow(h, xn + i * g, hn + i * g, bias, c_prev + i * long(h), acts + i * g, c + i * long(h));
}

// The activations of one step on this thread's rows, in the forward and again in the backward:
// the input term (N_x(W_x x_t) from `x`, this step's rows of x_t [R, D], or `x` itself when the
// cell hoisted it [R, G]), N_h of a_h = W_h h_{t-1}, the gates and c_t, N_c(c_t) into ch.
template <typename T>
struct Step {
  Step(bool in_loop, int rows, int g, int h)
      : ax(in_loop ? rows * g : 0), xn(in_loop ? rows * g : 0), hn(rows * g), acts(rows * g),
        cn(rows * h), ch(rows * h) {}
  std::vector<T> ax, xn, hn, acts, cn, ch;
};

template <typename T>
void Activations(const Site<T> sites[3], Scratch<T>& w, Member<T>& me, int t, int batch,
                 const Shape& sh, const T* x, Weight<T>* wx, const T* a_h, const T* bias,
                 const T* c_prev, const float* m, T n, Step<T>& st) {
  const T* xn = x;
  if (sh.in_loop) {
    wx->Multiply(me.rows, x, sh.d, st.ax.data(), sh.g);
    SiteForward(sites[0], 0, w, me, t, batch, st.ax.data(), m, n, st.xn.data());
    xn = st.xn.data();
  }
  SiteForward(sites[1], 1, w, me, t, batch, a_h, m, n, st.hn.data());
  Gates(me.rows, sh.h, xn, st.hn.data(), bias, c_prev, st.acts.data(), st.cn.data());
  SiteForward(sites[2], 2, w, me, t, batch, st.cn.data(), m, n, st.ch.data());
}

template <typename T>
T Count(const float* mt, int b) {
  T count = 0;
  for (int i = 0; i < b; ++i) count += mt[i];
  return std::max(count, T(1));
}

// Forward. Args after the shared 0-18: 19 the probe [T, B, H] (absent: none), added to h_t;
// 20-28 for each site k (streaming only, else absent) its initial sums n [B], s1, s2 [B, F] at
// 20 + 3k.. Rets: 0 h_T [B, H]   1 c_T   2 ys [T, B, H] (absent: cpu_lstm.py derives them from
// 3)   3 h_{t-1} per step [T, B, H] (absent: not saved)   4 c_{t-1} per step   5 W_h h_{t-1} per
// step [T, B, G] (absent: not saved; with identity sites the gate activations instead)
// 6-8 the three sites' batch means [T, F] (absent where not computed)   9-11 their variances
// 12-20 for each streaming site k at 12 + 3k: its final n [B], s1, s2 [B, F].
template <typename T>
ffi::Error Forward(ffi::RemainingArgs args, ffi::RemainingRets rets, const int64_t kinds[3],
                   double eps, double lam, int threads, bool columns) {
  auto arg = [&](int i) { return args.get<ffi::AnyBuffer>(i).value(); };
  Site<T> sites[3];
  const Shape sh = SetSites<T>(args, kinds, eps, sites);
  const int B = sh.b, H = sh.h, G = sh.g, D = sh.d;
  auto ret = [&](int i) { return rets.get<ffi::AnyBuffer>(i).value(); };
  auto r_h = ret(0), r_c = ret(1), r_ys = ret(2), r_hp = ret(3), r_cp = ret(4), r_ah = ret(5);
  T* hT = Out<T>(r_h);
  T* cT = Out<T>(r_c);
  T* ys = Out<T>(r_ys);
  T* h_save = Out<T>(r_hp);
  T* c_save = Out<T>(r_cp);
  T* ah_save = Out<T>(r_ah);
  for (int k = 0; k < 3; ++k) {
    auto rm = ret(6 + k), rv = ret(9 + k);
    Site<T>& s = sites[k];
    s.out_mean = Out<T>(rm);
    s.out_var = Out<T>(rv);
    s.lam = static_cast<T>(lam);
    if (s.kind != kStreaming) continue;
    for (int q = 0; q < 3; ++q) {  // n, s1, s2
      s.state0[q] = In<T>(arg(20 + 3 * k + q));
      auto out = ret(12 + 3 * k + q);
      s.state_out[q] = Out<T>(out);
    }
  }
  const T* kh = In<T>(arg(0));
  const T* kx = In<T>(arg(1));
  const T* bias = In<T>(arg(2));
  const T* h0 = In<T>(arg(9));
  const T* c0 = In<T>(arg(10));
  const T* inputs = In<T>(arg(11));
  const float* mask = In<float>(arg(12));
  const T* probe = In<T>(arg(19));
  const int nt = std::max(1, std::min(threads, B));
  for (const T* saved : {static_cast<const T*>(h_save), static_cast<const T*>(c_save)})
    if (saved) AdviseHugePages(saved, long(sh.t) * B * H * sizeof(T));
  if (ah_save) AdviseHugePages(ah_save, long(sh.t) * B * G * sizeof(T));
  Team<T> team(nt, 2 * G);
  // Split by columns: h_{t-1} of all rows and (unless saved) W_h h_{t-1}, shared.
  std::vector<T> hs(columns ? long(B) * H : 0), ahs(columns && !ah_save ? long(B) * G : 0);
  Pool::Get().Run(nt, [&](int tid) {
    Member<T> me{&team, tid, B * tid / nt, B * (tid + 1) / nt - B * tid / nt};
    const int R = me.rows, r0 = me.r0;
    const int g0 = G * tid / nt, g1 = G * (tid + 1) / nt;  // columns: this thread's of W_h
    Weight<T> wh(columns ? kh + g0 : kh, G, H, columns ? g1 - g0 : G, false);
    Weight<T> wx(kx, G, sh.in_loop ? D : 0, sh.in_loop ? G : 0, false);
    Scratch<T> w(G, H);
    for (int k = 0; k < 3; ++k) {  // streaming sites: this thread's rows of the initial sums
      const Site<T>& s = sites[k];
      if (s.kind != kStreaming) continue;
      Stream<T>& st = w.stream[k];
      st.n.assign(s.state0[0] + r0, s.state0[0] + r0 + R);
      st.s1.assign(s.state0[1] + long(r0) * s.f, s.state0[1] + long(r0 + R) * s.f);
      st.s2.assign(s.state0[2] + long(r0) * s.f, s.state0[2] + long(r0 + R) * s.f);
    }
    std::vector<T> hv(columns ? 0 : long(R) * H), c(c0 + long(r0) * H, c0 + long(r0 + R) * H);
    T* h = columns ? hs.data() + long(r0) * H : hv.data();  // this thread's rows of h_{t-1}
    std::copy(h0 + long(r0) * H, h0 + long(r0 + R) * H, h);
    Step<T> st(sh.in_loop, R, G, H);
    std::vector<T> ah(columns ? 0 : R * G);
    std::vector<T>& acts = st.acts;
    std::vector<T>& cn = st.cn;
    std::vector<T>& ch = st.ch;
    for (int t = 0; t < sh.t; ++t) {
      const float* mt = mask + long(t) * B;
      const T n = Count<T>(mt, B);
      const float* mr = mt + r0;  // this thread's rows
      const long row = long(t) * B + r0;
      if (h_save) {
        std::copy(h, h + long(R) * H, h_save + row * H);
        std::copy(c.begin(), c.end(), c_save + row * H);
      }
      T* aht;
      if (columns) {
        T* all = ah_save ? ah_save + long(t) * B * G : ahs.data();
        team.bar.Wait();  // every row of h_{t-1} is written
        wh.Multiply(B, hs.data(), H, all + g0, G);
        team.bar.Wait();  // every column of W_h h_{t-1} is written
        aht = all + long(r0) * G;
      } else {
        aht = ah_save ? ah_save + row * G : ah.data();
        wh.Multiply(R, h, H, aht, G);
      }
      Activations(sites, w, me, t, B, sh, inputs + row * (sh.in_loop ? D : G), &wx, aht, bias,
                  c.data(), mr, n, st);
      // With identity sites the backward needs the gate activations, not W_h h_{t-1}: saved in
      // its place (this thread's rows; the step's matmul is done), they spare the backward the
      // step's input matmul and 4H of its 5H transcendentals per row (PTB: ~10 ms of ~290).
      if (ah_save && sh.identity) std::copy(acts.begin(), acts.end(), aht);
      for (int k = 0; k < R * H; ++k) ch[k] = Tanh(ch[k]);
      T* yt = ys ? ys + row * H : nullptr;
      for (int i = 0; i < R; ++i) {
        if (!(mr[i] > 0)) {  // padded: hold the carry, output 0
          if (ys) std::fill(yt + long(i) * H, yt + long(i + 1) * H, T(0));
          continue;
        }
        const T* __restrict o = acts.data() + long(i) * G + 3 * H;
        const T* __restrict tau = ch.data() + long(i) * H;
        const T mi = mr[i];
        T* __restrict hi = h + long(i) * H;
        for (int j = 0; j < H; ++j) hi[j] = o[j] * tau[j];
        if (probe)
          for (int j = 0; j < H; ++j) hi[j] += probe[(row + i) * H + j];
        if (ys) {
          T* __restrict yi = yt + long(i) * H;
          for (int j = 0; j < H; ++j) yi[j] = hi[j] * mi;
        }
        std::copy(cn.data() + long(i) * H, cn.data() + long(i + 1) * H, c.data() + long(i) * H);
      }
    }
    std::copy(h, h + long(R) * H, hT + long(r0) * H);
    std::copy(c.begin(), c.end(), cT + long(r0) * H);
    for (int k = 0; k < 3; ++k) {
      const Site<T>& s = sites[k];
      if (s.kind != kStreaming) continue;
      const Stream<T>& st = w.stream[k];
      std::copy(st.n.begin(), st.n.end(), s.state_out[0] + r0);
      std::copy(st.s1.begin(), st.s1.end(), s.state_out[1] + long(r0) * s.f);
      std::copy(st.s2.begin(), st.s2.end(), s.state_out[2] + long(r0) * s.f);
    }
  });
  return ffi::Error::Success();
}

// Backward. Args after the shared 0-18: 19 h_{t-1} per step   20 c_{t-1} per step
// 21 W_h h_{t-1} per step (absent: recomputed; identity sites: the gate activations)
// 22 dL/dh_T   23 dL/dc_T   24 dL/dys (absent: zero)   25-27 cotangents of the sites' returned
// means (absent: zero)   28-30 of the variances
// 31-45 for each streaming site k at 31 + 5k: the final n, s1, s2 (the forward's), then
// dL/d(final s1), dL/d(final s2) (absent: zero)   46-48 per site this batch's means [T, F]
// (streaming in training with moment cotangents, else absent).
// Rets: 0 dW_h   1 dW_x (absent when hoisted)   2 dbias   3-5 dgamma per site   6-8 dbeta
// 9 dh0   10 dc0   11 d inputs (absent: not wanted)   12 d probe (absent: no probe)
// 13-15 d mean statistics per site (absent: not wanted)   16-18 d r statistics (streaming:
// d mu_L, d var_L [F])   19-24 for each streaming site k at 19 + 2k: dL/d(initial s1, s2).
template <typename T>
ffi::Error Backward(ffi::RemainingArgs args, ffi::RemainingRets rets, const int64_t kinds[3],
                    double eps, double lam, bool train, int threads, int chunk,
                    bool columns) {
  auto arg = [&](int i) { return args.get<ffi::AnyBuffer>(i).value(); };
  Site<T> sites[3];
  const Shape sh = SetSites<T>(args, kinds, eps, sites);
  const int B = sh.b, H = sh.h, G = sh.g, D = sh.d;
  auto ret = [&](int i) { return rets.get<ffi::AnyBuffer>(i).value(); };
  auto r_dkh = ret(0), r_dkx = ret(1), r_db = ret(2), r_dh0 = ret(9), r_dc0 = ret(10),
       r_dx = ret(11), r_dp = ret(12);
  T* dkh_out = Out<T>(r_dkh);
  T* dkx_out = Out<T>(r_dkx);
  T* dbias_out = Out<T>(r_db);
  T* dh0 = Out<T>(r_dh0);
  T* dc0 = Out<T>(r_dc0);
  T* dx = Out<T>(r_dx);
  T* dprobe = Out<T>(r_dp);
  T* dgamma_out[3];
  T* dbeta_out[3];
  for (int k = 0; k < 3; ++k) {
    auto rg = ret(3 + k), rb = ret(6 + k), rsm = ret(13 + k), rsr = ret(16 + k);
    Site<T>& s = sites[k];
    dgamma_out[k] = Out<T>(rg);
    dbeta_out[k] = Out<T>(rb);
    s.dstat_mean = Out<T>(rsm);
    s.dstat_r = Out<T>(rsr);
    s.dmean = In<T>(arg(25 + k));
    s.dvar = In<T>(arg(28 + k));
    s.lam = static_cast<T>(lam);
    if (s.kind != kStreaming) continue;
    for (int q = 0; q < 3; ++q) s.state_final[q] = In<T>(arg(31 + 5 * k + q));
    s.dstate_out[1] = In<T>(arg(34 + 5 * k));
    s.dstate_out[2] = In<T>(arg(35 + 5 * k));
    s.batch_mean = In<T>(arg(46 + k));
    auto d1 = ret(19 + 2 * k), d2 = ret(20 + 2 * k);
    s.dstate0[1] = Out<T>(d1);
    s.dstate0[2] = Out<T>(d2);
  }
  const T* kh = In<T>(arg(0));
  const T* kx = In<T>(arg(1));
  const T* bias = In<T>(arg(2));
  const T* inputs = In<T>(arg(11));
  const float* mask = In<float>(arg(12));
  const T* h_prev = In<T>(arg(19));
  const T* c_prev = In<T>(arg(20));
  const T* ah_saved = In<T>(arg(21));
  const T* dh_T = In<T>(arg(22));
  const T* dc_T = In<T>(arg(23));
  const T* dys = In<T>(arg(24));
  const int nt = std::max(1, std::min(threads, B));
  // dW_h (and dW_x) is accumulated once per chunk of K steps, as one [H, K*rows] x [K*rows, G]
  // matmul over a cache-sized buffer of dL/d(W_h h_{t-1}) (fused_lstm.py, chunk_size).
  const int K = std::max(1, chunk);
  Team<T> team(nt, 2 * G);
  // Each thread's parameter cotangents, summed in thread order at the end.
  std::vector<std::vector<T>> dkh(nt), dkx(nt), dbias(nt);
  std::vector<Scratch<T>> scratch(nt, Scratch<T>(G, H));
  // Split by columns: dL/dh of all rows, and the chunk's dL/d(W_h h_{t-1}) and (unless saved)
  // W_h h_{t-1} of all rows [K, B, G], shared.
  std::vector<T> dhs(columns ? long(B) * H : 0), dahs(columns ? long(K) * B * G : 0),
      ahs(columns && !ah_saved ? long(K) * B * G : 0);
  Pool::Get().Run(nt, [&](int tid) {
    Member<T> me{&team, tid, B * tid / nt, B * (tid + 1) / nt - B * tid / nt};
    const int R = me.rows, r0 = me.r0;
    // Columns: this thread's block of W_h's columns (forward, dW_h) and of its rows (dh).
    const int g0 = G * tid / nt, g1 = G * (tid + 1) / nt;
    const int j0 = H * tid / nt, j1 = H * (tid + 1) / nt;
    // W_h^T for dL/dh_{t-1}; W_h to recompute W_h h_{t-1} (if not saved); W_x: the input term.
    Weight<T> wht(columns ? kh + long(j0) * G : kh, G, G, columns ? j1 - j0 : H, true);
    Weight<T> wh(columns ? kh + g0 : kh, G, ah_saved ? 0 : H, ah_saved ? 0 : columns ? g1 - g0 : G,
                 false);
    Weight<T> wx(kx, G, sh.in_loop ? D : 0, sh.in_loop ? G : 0, false);
    Scratch<T>& w = scratch[tid];
    for (int k = 0; k < 3; ++k) {  // streaming sites: sums and carried cotangents of the rows
      const Site<T>& s = sites[k];
      if (s.kind != kStreaming) continue;
      Stream<T>& st = w.stream[k];
      const long lo = long(r0) * s.f, hi = long(r0 + R) * s.f;
      st.n.assign(s.state_final[0] + r0, s.state_final[0] + r0 + R);
      st.s1.assign(s.state_final[1] + lo, s.state_final[1] + hi);
      st.s2.assign(s.state_final[2] + lo, s.state_final[2] + hi);
      st.ds1.assign(hi - lo, T(0));
      st.ds2.assign(hi - lo, T(0));
      if (s.dstate_out[1]) std::copy(s.dstate_out[1] + lo, s.dstate_out[1] + hi, st.ds1.begin());
      if (s.dstate_out[2]) std::copy(s.dstate_out[2] + lo, s.dstate_out[2] + hi, st.ds2.begin());
      st.dmu_l.assign(s.f, T(0));
      st.dvar_l.assign(s.f, T(0));
    }
    std::vector<T>& dW = dkh[tid];
    std::vector<T>& dWx = dkx[tid];
    std::vector<T>& db = dbias[tid];
    dW.assign(columns ? 0 : long(H) * G, T(0));
    if (columns)  // written in place, this thread's columns
      for (int j = 0; j < H; ++j)
        std::fill(dkh_out + long(j) * G + g0, dkh_out + long(j) * G + g1, T(0));
    dWx.assign(sh.in_loop ? long(D) * G : 0, T(0));
    db.assign(G, T(0));
    std::vector<T> dhv(columns ? 0 : R * H), dc(R * H, T(0));
    T* dh = columns ? dhs.data() + long(r0) * H : dhv.data();  // this thread's rows of dL/dh
    if (dh_T) std::copy(dh_T + long(r0) * H, dh_T + long(r0 + R) * H, dh);
    else std::fill(dh, dh + long(R) * H, T(0));
    if (dc_T) std::copy(dc_T + long(r0) * H, dc_T + long(r0 + R) * H, dc.begin());
    // Per chunk of K steps: this thread's h_{t-1} rows (and inputs) gathered contiguously, and
    // W_h h_{t-1} recomputed from them by one matmul (all are saved, so this need not wait for
    // the recurrence) unless the forward saved it. Split by columns, the chunk's h_{t-1} of all
    // rows are read where they are saved (contiguous, time-major).
    std::vector<T> hp_chunk(columns ? 0 : long(K) * R * H),
        x_chunk(sh.in_loop ? long(K) * R * D : 0),
        ah(ah_saved || columns ? 0 : long(K) * R * G), dah(columns ? 0 : long(K) * R * G),
        dax(sh.in_loop ? long(K) * R * G : 0);
    Step<T> st(sh.in_loop, R, G, H);
    std::vector<T>& acts = st.acts;
    std::vector<T>& cn = st.cn;
    std::vector<T>& ch = st.ch;
    std::vector<T> tau(R * H), dhn(R * H), dhh(R * H), dch(R * H), dcc(R * H), dpre(R * G);
    for (int t1 = sh.t; t1 > 0; t1 -= K) {
      const int t0 = std::max(0, t1 - K);
      const T* hp_all = h_prev + long(t0) * B * H;  // the chunk's h_{t-1}, all rows
      if (columns) team.bar.Wait();  // the previous chunk's dW_h no longer reads dahs, ahs
      for (int t = t0; t < t1; ++t) {
        const long row = long(t) * B + r0;
        if (!columns)
          std::copy(h_prev + row * H, h_prev + (row + R) * H,
                    hp_chunk.data() + long(t - t0) * R * H);
        if (sh.in_loop)
          std::copy(inputs + row * D, inputs + (row + R) * D, x_chunk.data() + long(t - t0) * R * D);
      }
      if (!ah_saved && columns) {
        wh.Multiply((t1 - t0) * B, hp_all, H, ahs.data() + g0, G);
        team.bar.Wait();  // every column of the chunk's W_h h_{t-1} is written
      } else if (!ah_saved) {
        wh.Multiply((t1 - t0) * R, hp_chunk.data(), H, ah.data(), G);
      }
      for (int t = t1 - 1; t >= t0; --t) {
        const float* mt = mask + long(t) * B;
        const T n = Count<T>(mt, B);
        const float* mr = mt + r0;
        const long row = long(t) * B + r0;
        const T* cp = c_prev + row * H;
        // The step's activations again, with the statistics the forward normalized with.
        const long slot = long(t - t0) * (columns ? B : R);  // first row of step t in a chunk
        const T* aht = ah_saved ? ah_saved + row * G
                                : (columns ? ahs.data() + (slot + r0) * G : ah.data() + slot * G);
        const T* x = sh.in_loop ? x_chunk.data() + long(t - t0) * R * D : inputs + row * G;
        const T* act = acts.data();
        if (ah_saved && sh.identity) {  // the forward saved the gate activations (see there)
          act = aht;
          for (int i = 0; i < R; ++i)
            CellRow(H, act + long(i) * G, cp + long(i) * H, cn.data() + long(i) * H);
          SiteForward(sites[2], 2, w, me, t, B, cn.data(), mr, n, ch.data());
        } else {
          Activations(sites, w, me, t, B, sh, x, &wx, aht, bias, cp, mr, n, st);
        }
        // Back through the output and the hold of padded steps.
        for (int k = 0; k < R * H; ++k) tau[k] = Tanh(ch[k]);
        if (dys)
          for (int i = 0; i < R; ++i) {
            const T mi = mr[i];
            const T* __restrict dy = dys + (row + i) * H;
            T* __restrict dhi = dh + long(i) * H;
            for (int j = 0; j < H; ++j) dhi[j] += dy[j] * mi;
          }
        // A padded row's step is skipped: its carry's cotangent passes through unchanged and
        // nothing reaches the step's activations. Selected, not multiplied by the mask: those
        // activations come from whatever fills the padding and may be inf or NaN in float32.
        for (int i = 0; i < R; ++i) {
          const T* __restrict o = act + long(i) * G + 3 * H;
          const T* __restrict dhi = dh + long(i) * H;
          const T* __restrict ti = tau.data() + long(i) * H;
          T* __restrict dhni = dhn.data() + long(i) * H;
          T* __restrict dhhi = dhh.data() + long(i) * H;
          T* __restrict dchi = dch.data() + long(i) * H;
          if (!(mr[i] > 0)) {
            std::fill(dhni, dhni + H, T(0));
            std::copy(dhi, dhi + H, dhhi);
            std::fill(dchi, dchi + H, T(0));
            continue;
          }
          for (int j = 0; j < H; ++j) {
            dhni[j] = dhi[j];
            dhhi[j] = T(0);
            dchi[j] = dhi[j] * o[j] * (T(1) - ti[j] * ti[j]);
          }
        }
        if (dprobe) std::copy(dhn.begin(), dhn.end(), dprobe + row * H);
        SiteBackward(sites[2], 2, w, me, t, train, cn.data(), mr, n, dch.data(), dcc.data());
        for (int i = 0; i < R; ++i) {
          const T* __restrict a = act + long(i) * G;
          const T* __restrict cpi = cp + long(i) * H;
          const T* __restrict dcci = dcc.data() + long(i) * H;
          const T* __restrict dhni = dhn.data() + long(i) * H;
          const T* __restrict taui = tau.data() + long(i) * H;
          T* __restrict dci = dc.data() + long(i) * H;
          T* __restrict dp = dpre.data() + long(i) * G;
          if (!(mr[i] > 0)) {  // padded (see above): dL/dc_{t-1} = dL/dc_t, no gate cotangents
            std::fill(dp, dp + G, T(0));
            continue;
          }
          for (int j = 0; j < H; ++j) {
            const T gg = a[j], f = a[H + j], in = a[2 * H + j], o = a[3 * H + j];
            const T dct = dci[j] + dcci[j];
            dci[j] = dct * f;
            dp[j] = dct * in * (T(1) - gg * gg);
            dp[H + j] = dct * cpi[j] * f * (T(1) - f);
            dp[2 * H + j] = dct * gg * in * (T(1) - in);
            dp[3 * H + j] = dhni[j] * taui[j] * o * (T(1) - o);
          }
          for (int j = 0; j < G; ++j) db[j] += dp[j];
        }
        T* daht = columns ? dahs.data() + (slot + r0) * G : dah.data() + slot * G;
        SiteBackward(sites[1], 1, w, me, t, train, aht, mr, n, dpre.data(), daht);
        if (columns) {  // dL/dh_{t-1} = dL/da_h W_h^T: this thread's columns, all rows
          team.bar.Wait();  // every row of dL/da_h is written
          wht.Multiply(B, dahs.data() + slot * G, G, dhs.data() + j0, H);
          team.bar.Wait();  // every column of dL/dh_{t-1} is written
        } else {
          wht.Multiply(R, daht, G, dh, H);
        }
        for (int k = 0; k < R * H; ++k) dh[k] += dhh[k];
        if (sh.in_loop) {
          T* daxt = dax.data() + long(t - t0) * R * G;
          SiteBackward(sites[0], 0, w, me, t, train, st.ax.data(), mr, n, dpre.data(), daxt);
          if (dx) Gemm(false, true, R, D, G, daxt, kx, T(0), dx + row * D);
        } else if (dx) {
          std::copy(dpre.begin(), dpre.end(), dx + row * G);
        }
      }
      // What does not feed the recurrence, for the chunk's steps at once.
      const int rows = (t1 - t0) * R;
      if (columns)  // this thread's columns of dW_h, over all rows of the chunk
        Gemm(true, false, H, g1 - g0, (t1 - t0) * B, hp_all, H, dahs.data() + g0, G, T(1),
             dkh_out + g0, G);
      else
        Gemm(true, false, H, G, rows, hp_chunk.data(), dah.data(), T(1), dW.data());
      if (sh.in_loop) Gemm(true, false, D, G, rows, x_chunk.data(), dax.data(), T(1), dWx.data());
    }
    std::copy(dh, dh + long(R) * H, dh0 + long(r0) * H);
    std::copy(dc.begin(), dc.end(), dc0 + long(r0) * H);
    for (int k = 0; k < 3; ++k) {
      const Site<T>& s = sites[k];
      if (s.kind != kStreaming) continue;
      const Stream<T>& st = w.stream[k];
      std::copy(st.ds1.begin(), st.ds1.end(), s.dstate0[1] + long(r0) * s.f);
      std::copy(st.ds2.begin(), st.ds2.end(), s.dstate0[2] + long(r0) * s.f);
    }
    // Sum the threads' cotangents in thread order (thread 0, after all are done).
    team.bar.Wait();
    if (tid != 0) return;
    auto sum = [&](auto part, T* out, long size) {
      if (out == nullptr) return;
      std::fill(out, out + size, T(0));
      for (int k = 0; k < nt; ++k) {
        const T* p = part(k);
        for (long j = 0; j < size; ++j) out[j] += p[j];
      }
    };
    if (!columns) sum([&](int k) { return dkh[k].data(); }, dkh_out, long(H) * G);
    if (sh.in_loop) sum([&](int k) { return dkx[k].data(); }, dkx_out, long(D) * G);
    sum([&](int k) { return dbias[k].data(); }, dbias_out, G);
    for (int s = 0; s < 3; ++s) {
      sum([&](int k) { return scratch[k].dgamma[s].data(); }, dgamma_out[s], sites[s].f);
      sum([&](int k) { return scratch[k].dbeta[s].data(); }, dbeta_out[s], sites[s].f);
      if (sites[s].kind == kStreaming) {
        sum([&](int k) { return scratch[k].stream[s].dmu_l.data(); }, sites[s].dstat_mean,
            sites[s].f);
        sum([&](int k) { return scratch[k].stream[s].dvar_l.data(); }, sites[s].dstat_r,
            sites[s].f);
      }
    }
  });
  return ffi::Error::Success();
}

// The checks both handlers make, then fn(T()) with T the float type of the arguments.
template <typename Fn>
ffi::Error ByDtype(const ffi::RemainingArgs& args, Fn fn) {
  if (g_sgemm == nullptr) return ffi::Error::Internal("normrnn cpu kernel: BLAS not set");
  auto kh = args.get<ffi::AnyBuffer>(0);
  if (!kh.has_value()) return ffi::Error::InvalidArgument("normrnn cpu kernel: no arguments");
  switch (kh->element_type()) {
    case ffi::DataType::F32: return fn(float());
    case ffi::DataType::F64: return fn(double());
    default: return ffi::Error::InvalidArgument("normrnn cpu kernel: float32 or float64 only");
  }
}

ffi::Error ForwardHandler(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t kind_input,
                          int64_t kind_recurrent, int64_t kind_cell, double eps, double lam,
                          int64_t threads, int64_t /*chunk: the backward's*/,
                          int64_t columns) {
  const int64_t kinds[3] = {kind_input, kind_recurrent, kind_cell};
  return ByDtype(args, [&](auto zero) {
    return Forward<decltype(zero)>(args, rets, kinds, eps, lam, threads, columns != 0);
  });
}

ffi::Error BackwardHandler(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t kind_input,
                           int64_t kind_recurrent, int64_t kind_cell, double eps, double lam,
                           int64_t threads, int64_t chunk, int64_t columns, int64_t train) {
  const int64_t kinds[3] = {kind_input, kind_recurrent, kind_cell};
  return ByDtype(args, [&](auto zero) {
    return Backward<decltype(zero)>(args, rets, kinds, eps, lam, train != 0, threads, chunk,
                                    columns != 0);
  });
}

// The arguments, results and attributes both handlers take (cpu_lstm.py passes the same
// attributes to both); the backward adds `train`.
auto Binding() {
  return ffi::Ffi::Bind()
      .RemainingArgs()
      .RemainingRets()
      .Attr<int64_t>("kind_input")
      .Attr<int64_t>("kind_recurrent")
      .Attr<int64_t>("kind_cell")
      .Attr<double>("eps")
      .Attr<double>("lam")
      .Attr<int64_t>("threads")
      .Attr<int64_t>("chunk")
      .Attr<int64_t>("columns");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NormrnnLstmForward, ForwardHandler, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(NormrnnLstmBackward, BackwardHandler,
                              Binding().Attr<int64_t>("train"));

// Called once from Python with the addresses of cblas_sgemm and cblas_dgemm (of a BLAS that
// this library's own threads call concurrently, each single-threaded).
extern "C" __attribute__((visibility("default"))) void normrnn_set_blas(void* sgemm,
                                                                       void* dgemm) {
  g_sgemm = reinterpret_cast<SgemmFn>(sgemm);
  g_dgemm = reinterpret_cast<DgemmFn>(dgemm);
}
