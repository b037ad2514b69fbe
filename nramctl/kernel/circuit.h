// One example's circuit (gate inputs, gates, memory, registers), forward and backward, and the
// helpers the entry points share. Shapes as in nramctl/circuit.py.
#pragma once
#include "gates.h"

// Shared by the circuit entry points (circuit.py's autograd node, kernel.cpp) and the fused timestep
// (fused.h).

// Rows of V (sources) and AB (gate inputs) are padded from M to P cells, a multiple of 8, with zeros,
// so that the loops over cells run on whole vectors (GCC/Clang vector types, 8 lanes).
inline int padded(int n) { return (n + 7) / 8 * 8; }

struct Circuit {
    int R, Q, K, M, G;
    const int* codes;
    const int* arity;
    const int* values;
    int P, K8;              // M and K rounded up to a multiple of 8
};

static Circuit make_circuit(int R, int Q, int M, int G, const int* codes, const int* arity, const int* values) {
    return Circuit{R, Q, R + Q, M, G, codes, arity, values, padded(M), padded(R + Q)};
}

template <typename T> struct Lanes;
template <> struct Lanes<float> {
    typedef float v __attribute__((vector_size(32), aligned(4)));
};
template <> struct Lanes<double> {
    typedef double v __attribute__((vector_size(64), aligned(8)));
};

// NO mixtures of the same rows at once, over CV vectors of cells from c0: out[o][c] = sum_{k<n}
// w[o][k] rows[k][c]. Their NO x CV sums are independent chains of multiply-adds, enough of them to
// hide the instruction's latency (one mixture of 3 vectors alone waits on each multiply-add), and
// each is the same sum in the same order as when done alone.
template <int NO, int CV, typename T>
static inline void mix_block(const T* __restrict w, int ldw, int n, const T* __restrict rows, int P, int c0,
                             T* __restrict out, int ldo) {
    typedef typename Lanes<T>::v v;
    v acc[NO][CV] = {};
    for (int k = 0; k < n; k++) {
        const v* row = (const v*)(rows + (size_t)k * P) + c0;
        for (int c = 0; c < CV; c++) {
            const v r = row[c];
            for (int o = 0; o < NO; o++) acc[o][c] += w[(size_t)o * ldw + k] * r;
        }
    }
    for (int o = 0; o < NO; o++)
        for (int c = 0; c < CV; c++) ((v*)(out + (size_t)o * ldo))[c0 + c] = acc[o][c];
}

template <int NO, typename T>
static inline void mix_n(const T* w, int ldw, int n, const T* rows, int P, T* out, int ldo) {
    const int nv = P / 8;
    int c0 = 0;
    for (; c0 + 3 <= nv; c0 += 3) mix_block<NO, 3>(w, ldw, n, rows, P, c0, out, ldo);
    for (; c0 < nv; c0++) mix_block<NO, 1>(w, ldw, n, rows, P, c0, out, ldo);
}

// out[o][0:P] = sum_{k<n} w[o][k] rows[k][0:P] for o < nout (weights ldw apart, rows P apart, outputs
// ldo apart), P a multiple of 8, in groups of up to 4 outputs. Also the backward's dot products: the
// rows of a matrix against the columns of another, without a horizontal sum per product.
template <typename T>
static inline void mix(const T* w, int ldw, int nout, int n, const T* rows, int P, T* out, int ldo) {
    int o = 0;
    for (; o + 4 <= nout; o += 4) mix_n<4>(w + (size_t)o * ldw, ldw, n, rows, P, out + (size_t)o * ldo, ldo);
    switch (nout - o) {
    case 3: mix_n<3>(w + (size_t)o * ldw, ldw, n, rows, P, out + (size_t)o * ldo, ldo); break;
    case 2: mix_n<2>(w + (size_t)o * ldw, ldw, n, rows, P, out + (size_t)o * ldo, ldo); break;
    case 1: mix_n<1>(w + (size_t)o * ldw, ldw, n, rows, P, out + (size_t)o * ldo, ldo); break;
    }
}

// The gate index of the circuit's first WRITE (Q if none). Memory gates up to it see the memory the
// step began with, which the backward reads from there; only those after it need a saved copy, so G
// counts the memory gates after the first WRITE (none for the paper's gate order).
static int first_write(const Circuit& c) {
    for (int i = 0; i < c.Q; i++)
        if (c.codes[i] == WRITE) return i;
    return c.Q;
}

// VT [P, K8] = V [K, P] transposed, its columns from K on zero.
template <typename T>
static void transpose(const T* __restrict V, int K, int P, int K8, T* __restrict VT) {
    for (int m = 0; m < P; m++)
        for (int k = 0; k < K8; k++) VT[(size_t)m * K8 + k] = k < K ? V[(size_t)k * P + m] : T(0);
}

// float: in blocks of 8 x 8, each transposed in three rounds of shuffles (interleave pairs of rows,
// then pairs of pairs, then the halves), where an element at a time took about a sixth of the
// forward circuit's time. P and K8 are multiples of 8.
template <>
void transpose<float>(const float* __restrict V, int K, int P, int K8, float* __restrict VT) {
    typedef float v8 __attribute__((vector_size(32)));
    typedef float v8u __attribute__((vector_size(32), aligned(4)));
    typedef int i8 __attribute__((vector_size(32)));
    const i8 lo1 = {0, 8, 1, 9, 4, 12, 5, 13}, hi1 = {2, 10, 3, 11, 6, 14, 7, 15};
    const i8 lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    const i8 lo3 = {0, 1, 2, 3, 8, 9, 10, 11}, hi3 = {4, 5, 6, 7, 12, 13, 14, 15};
    for (int k0 = 0; k0 < K8; k0 += 8)
        for (int m0 = 0; m0 < P; m0 += 8) {
            v8 r[8], t[8], u[8];
            for (int i = 0; i < 8; i++)
                r[i] = k0 + i < K ? (v8)*(const v8u*)(V + (size_t)(k0 + i) * P + m0) : v8{};
            for (int i = 0; i < 8; i += 2) {
                t[i] = __builtin_shuffle(r[i], r[i + 1], lo1);
                t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi1);
            }
            for (int i = 0; i < 8; i += 4)
                for (int h = 0; h < 2; h++) {
                    u[i + 2 * h] = __builtin_shuffle(t[i + h], t[i + h + 2], lo2);
                    u[i + 2 * h + 1] = __builtin_shuffle(t[i + h], t[i + h + 2], hi2);
                }
            for (int j = 0; j < 4; j++) {
                *(v8u*)(VT + (size_t)(m0 + j) * K8 + k0) = __builtin_shuffle(u[j], u[j + 4], lo3);
                *(v8u*)(VT + (size_t)(m0 + j + 4) * K8 + k0) = __builtin_shuffle(u[j], u[j + 4], hi3);
            }
        }
}

// One example's circuit. V [K, P] (scratch): the registers, then each gate's output, and VT [P, K8]
// the same transposed, for the backward's dot products (when not null); AB [2Q, P]: the gate inputs;
// saved [G, M, M] (when not null): memory as each memory gate after the first WRITE saw it; the new
// registers [R, M] and memory [M, M], renormalized when asked. tmp: R x P cells of scratch.
template <typename T>
static void circuit_forward_one(const Circuit& c, const T* __restrict W, const T* __restrict U,
                                const T* __restrict regs, const T* __restrict mem_in, T* __restrict V,
                                T* __restrict VT, T* __restrict AB, T* __restrict saved,
                                T* __restrict new_regs, T* __restrict mem, int renorm, T* __restrict tmp) {
    const int R = c.R, Q = c.Q, K = c.K, M = c.M, P = c.P;
    std::memcpy(mem, mem_in, sizeof(T) * M * M);
    for (int r = 0; r < R; r++) {
        std::memcpy(V + (size_t)r * P, regs + (size_t)r * M, sizeof(T) * M);
        std::fill(V + (size_t)r * P + M, V + (size_t)(r + 1) * P, T(0));
    }
    int g = 0;
    const int w0 = first_write(c);
    for (int i = 0; i < Q; i++) {
        T* out = V + (size_t)(R + i) * P;
        const int ar = c.arity[i], code = c.codes[i];
        mix(W + (size_t)(2 * i) * K, K, ar, R + i, V, P, AB + (size_t)(2 * i) * P, P);
        const T* A = AB + (size_t)(2 * i) * P;
        const T* B = ar ? AB + (size_t)(2 * i + ar - 1) * P : A;
        if (saved && i > w0 && (code == READ || code == WRITE))   // no saving when no gradient is wanted
            std::memcpy(saved + (size_t)(g++) * M * M, mem, sizeof(T) * M * M);
        if (code == READ) {
            std::fill(out, out + M, T(0));
            for (int p = 0; p < M; p++) {
                const T ap = A[p];
                const T* __restrict row = mem + (size_t)p * M;
                for (int m = 0; m < M; m++) out[m] += ap * row[m];
            }
        } else if (code == WRITE) {
            for (int p = 0; p < M; p++) {
                const T ap = A[p];
                T* __restrict row = mem + (size_t)p * M;
                for (int m = 0; m < M; m++) row[m] += ap * (B[m] - row[m]);
            }
            std::memcpy(out, B, sizeof(T) * M);
        } else {
            gate_forward(code, M, c.values[i], A, B, out);
        }
        std::fill(out + M, out + P, T(0));
    }
    mix(U, K, R, K, V, P, tmp, P);
    for (int r = 0; r < R; r++) std::memcpy(new_regs + (size_t)r * M, tmp + (size_t)r * P, sizeof(T) * M);
    if (VT) transpose(V, K, P, c.K8, VT);  // while V is in cache
    if (renorm) {
        for (int r = 0; r < R + M; r++) {
            T* row = r < R ? new_regs + (size_t)r * M : mem + (size_t)(r - R) * M;
            T s = 0;
            for (int m = 0; m < M; m++) s += row[m];
            const T inv = T(1) / s;
            for (int m = 0; m < M; m++) row[m] *= inv;
        }
    }
}

template <typename T>
static inline T clamp(T x, T c) { return c > 0 ? std::min(std::max(x, -c), c) : x; }

// sum_m x[m] y[m], in m order
template <typename T>
static inline T dot(const T* __restrict x, const T* __restrict y, int n) {
    T sum = 0;
    for (int m = 0; m < n; m++) sum += x[m] * y[m];
    return sum;
}

// Per-example scratch of the circuit's backward. grads: the gradients of the 2Q gate inputs, then of
// the R new registers, rows P apart, so that a source's gradient is one mixture of consecutive rows.
template <typename T>
struct CircuitScratch {
    std::vector<T> dV, D, grads, dW, dU, wt;
    explicit CircuitScratch(const Circuit& c)
        : dV((size_t)c.R * c.P), D(c.P), grads((size_t)(2 * c.Q + c.R) * c.P, T(0)),
          dW((size_t)2 * c.Q * c.K8), dU((size_t)c.R * c.K8), wt((size_t)c.R * (2 * c.Q + c.R)) {}
    T* dR(const Circuit& c) { return grads.data() + (size_t)2 * c.Q * c.P; }
};

// The weights with which source k's value entered each row of s.grads: W[j][k] for the gate inputs
// from slot j0 on, then U[r][k]; -> how many.
template <typename T>
static inline int source_weights(const Circuit& c, const T* W, const T* U, int k, int j0, T* wt) {
    int n = 0;
    for (int j = j0; j < 2 * c.Q; j++) wt[n++] = W[(size_t)j * c.K + k];
    for (int r = 0; r < c.R; r++) wt[n++] = U[(size_t)r * c.K + k];
    return n;
}

// Given the gradient of the new registers (clipped, in s.dR) and d_mem (of the memory after the
// step, clipped; overwritten with the gradient of the memory before it): s.dW [2Q, K8] and s.dU
// [R, K8], the gradients of the softmax weights (before the softmax's own backward; entries of
// sources a gate may not read are to be ignored), and s.dV [R, P], the gradient of the registers
// before the step. A gate's output gradient is gathered when the walk back reaches it, from the new
// registers and the inputs of the later gates (a mixture accumulated in registers).
template <typename T>
static void circuit_backward_one(const Circuit& c, const T* __restrict W, const T* __restrict U,
                                 const T* __restrict VT, const T* __restrict AB, const T* __restrict saved,
                                 const T* __restrict mem_in, T* __restrict d_mem, CircuitScratch<T>& s) {
    const int R = c.R, Q = c.Q, M = c.M, P = c.P, K8 = c.K8;
    T* grads = s.grads.data();
    T* D = s.D.data();
    std::fill(grads, grads + (size_t)2 * Q * P, T(0));
    mix(s.dR(c), P, R, M, VT, K8, s.dU.data(), K8);
    const int w0 = first_write(c);
    int g = c.G;
    for (int i = Q - 1; i >= 0; i--) {
        const int ar = c.arity[i], code = c.codes[i];
        if (!ar) continue;
        const int j0 = 2 * (i + 1);
        mix(s.wt.data(), 0, 1, source_weights(c, W, U, R + i, j0, s.wt.data()), grads + (size_t)j0 * P, P, D, P);
        const T* A = AB + (size_t)(2 * i) * P;
        const T* B = AB + (size_t)(2 * i + ar - 1) * P;
        T* dA = grads + (size_t)(2 * i) * P;
        T* dB = grads + (size_t)(2 * i + 1) * P;
        // READ and WRITE: each row's sum (a chain in cell order) in a loop of its own, apart from
        // the updates of d_mem, which then run on vectors (one loop with both ran as scalars: the
        // circuit's backward took 15% longer)
        if (code == READ) {
            const T* mem = i > w0 ? saved + (size_t)(--g) * M * M : mem_in;
            for (int p = 0; p < M; p++) {
                const T ap = A[p];
                const T* __restrict row = mem + (size_t)p * M;
                T* __restrict drow = d_mem + (size_t)p * M;
                dA[p] = dot(row, D, M);
                for (int m = 0; m < M; m++) drow[m] += ap * D[m];
            }
        } else if (code == WRITE) {
            const T* mem = i > w0 ? saved + (size_t)(--g) * M * M : mem_in;
            for (int m = 0; m < M; m++) dB[m] = D[m];
            for (int p = 0; p < M; p++) {
                const T ap = A[p];
                const T* __restrict row = mem + (size_t)p * M;
                T* __restrict drow = d_mem + (size_t)p * M;
                T sum = 0;
                for (int m = 0; m < M; m++) sum += drow[m] * (B[m] - row[m]);
                dA[p] = sum;
                for (int m = 0; m < M; m++) {
                    const T d = drow[m];
                    dB[m] += ap * d;
                    drow[m] = d * (1 - ap);
                }
            }
        } else {
            gate_backward(code, M, A, B, D, dA, dB);
        }
    }
    const int nw = 2 * Q + R;          // the registers before the step, from everything that read them
    for (int k = 0; k < R; k++) source_weights(c, W, U, k, 0, s.wt.data() + (size_t)k * nw);
    mix(s.wt.data(), nw, R, nw, grads, P, s.dV.data(), P);
    mix(grads, P, 2 * Q, M, VT, K8, s.dW.data(), K8);
}

template <typename T>
static void softmax_grad(const T* w, const T* dw, T* out, int n, T c) {
    const T wdw = dot(w, dw, n);
    for (int k = 0; k < n; k++) out[k] = clamp(w[k] * (dw[k] - wdw), c);
}

// Ask for the cache lines of x[0:n] ahead of their use.
template <typename T>
static inline void prefetch(const T* x, size_t n) {
    const char* p = (const char*)x;
    for (size_t b = 0; b < n * sizeof(T); b += 64) __builtin_prefetch(p + b);
}

// The examples [n0, n1) of this thread out of N (contiguous shares).
static inline void share(int N, int threads, int& n0, int& n1) {
#ifdef _OPENMP
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    int t = 0, nt = 1;
    (void)threads;
#endif
    n0 = (int)((long long)N * t / nt);
    n1 = (int)((long long)N * (t + 1) / nt);
}

// The clipped gradient of the new registers [R, M] (none: zeros) into s.dR, rows P apart.
template <typename T>
static void load_d_registers(const Circuit& c, const T* d_regs, T clipc, CircuitScratch<T>& s) {
    T* dR = s.dR(c);
    for (int r = 0; r < c.R; r++)
        for (int m = 0; m < c.M; m++) dR[(size_t)r * c.P + m] = d_regs ? clamp(d_regs[(size_t)r * c.M + m], clipc) : T(0);
}

// The gradient of the registers before the step, out of s.dV, into [R, M].
template <typename T>
static void store_d_registers(const Circuit& c, const CircuitScratch<T>& s, T* d_regs_in) {
    for (int r = 0; r < c.R; r++) std::memcpy(d_regs_in + (size_t)r * c.M, &s.dV[(size_t)r * c.P], sizeof(T) * c.M);
}

