// The fused circuit of one NRAM timestep, forward and backward, as plain loops over examples.
//
// Same computation as nramctl/circuit.py (which is the definition; tests/test_reference.py checks
// both against a plain autograd reference). Each example's registers and M x M memory fit in cache,
// so one pass per example replaces a few hundred small tensor operations per timestep.
// Built on first use by nramctl/native.py and called through ctypes on contiguous tensors; with
// OpenMP the examples are shared out over torch's own threads (native.py says why).
//
// Shapes per example: W [Q, 2, K] gate-input weights, U [R, K] register weights, V [K, M] sources
// (registers, then gate outputs), AB [Q, 2, M] gate inputs, saved [G, M, M] memory as each of the G
// memory gates saw it, K = R + Q. Gate codes match native.py's CODES.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { READ, WRITE, CONST, INC, DEC, ADD, SUB, LT, LE, EQ, MIN, MAX };

// out[c] += s * X[(c + shift) mod M] for all c, without a modulo in the inner loops
template <typename T>
static inline void shifted_axpy(T s, const T* X, int shift, T* out, int M) {
    shift %= M;
    for (int c = 0; c < M - shift; c++) out[c] += s * X[c + shift];
    for (int c = M - shift; c < M; c++) out[c] += s * X[c + shift - M];
}

template <typename T>
static void gate_forward(int code, int M, int value, const T* A, const T* B, T* out) {
    switch (code) {
    case CONST:
        std::fill(out, out + M, T(0));
        out[value % M] = T(1);
        break;
    case INC:   // out[c] = A[c - 1]
        out[0] = A[M - 1];
        for (int c = 1; c < M; c++) out[c] = A[c - 1];
        break;
    case DEC:   // out[c] = A[c + 1]
        for (int c = 0; c < M - 1; c++) out[c] = A[c + 1];
        out[M - 1] = A[0];
        break;
    case ADD:   // out[c] = sum_a A[a] B[c - a]
        std::fill(out, out + M, T(0));
        for (int a = 0; a < M; a++) shifted_axpy(A[a], B, M - a, out, M);
        break;
    case SUB:   // out[c] = sum_b B[b] A[c + b]
        std::fill(out, out + M, T(0));
        for (int b = 0; b < M; b++) shifted_axpy(B[b], A, b, out, M);
        break;
    case LT: case LE: case EQ: {   // P(1) = s, P(0) = sum A sum B - s
        T s = 0, below = 0, sa = 0, sb = 0;
        for (int x = 0; x < M; x++) {
            if (code == LE) below += A[x];
            s += code == EQ ? A[x] * B[x] : B[x] * below;   // below = P(A < x) or P(A <= x)
            if (code == LT) below += A[x];
            sa += A[x];
            sb += B[x];
        }
        std::fill(out, out + M, T(0));
        out[0] = sa * sb - s;
        if (M > 1) out[1] = s;   // M = 1 has no value 1: only P(0) exists
        break;
    }
    case MIN: case MAX: {   // MIN: A[c] P(B >= c) + P(A > c) B[c]; MAX: A[c] P(B <= c) + P(A < c) B[c]
        bool mx = code == MAX;
        T b_incl = 0, a_excl = 0;
        for (int k = 0; k < M; k++) {
            int c = mx ? k : M - 1 - k;   // sweep towards the side the tail sums cover
            b_incl += B[c];
            out[c] = A[c] * b_incl + a_excl * B[c];
            a_excl += A[c];
        }
        break;
    }
    }
}

// dA, dB of one value gate given dOut (the gradient of the bilinear formula, as gates.py's grads)
template <typename T>
static void gate_backward(int code, int M, const T* A, const T* B, const T* D, T* dA, T* dB) {
    switch (code) {
    case INC:   // dA[a] = D[a + 1]
        for (int a = 0; a < M - 1; a++) dA[a] = D[a + 1];
        dA[M - 1] = D[0];
        break;
    case DEC:   // dA[a] = D[a - 1]
        dA[0] = D[M - 1];
        for (int a = 1; a < M; a++) dA[a] = D[a - 1];
        break;
    case ADD:   // dA[a] = sum_b B[b] D[a + b], dB[b] = sum_a A[a] D[a + b]
        std::fill(dA, dA + M, T(0));
        std::fill(dB, dB + M, T(0));
        for (int x = 0; x < M; x++) {
            shifted_axpy(B[x], D, x, dA, M);
            shifted_axpy(A[x], D, x, dB, M);
        }
        break;
    case SUB:   // dA[a] = sum_b B[b] D[a - b], dB[b] = sum_c D[c] A[c + b]
        std::fill(dA, dA + M, T(0));
        std::fill(dB, dB + M, T(0));
        for (int x = 0; x < M; x++) {
            shifted_axpy(B[x], D, M - x, dA, M);
            shifted_axpy(D[x], A, x, dB, M);
        }
        break;
    case LT: case LE: case EQ: {
        T sa = 0, sb = 0, d0 = D[0], ds = (M > 1 ? D[1] : T(0)) - D[0];
        for (int x = 0; x < M; x++) { sa += A[x]; sb += B[x]; }
        if (code == EQ) {
            for (int x = 0; x < M; x++) { dA[x] = d0 * sb + ds * B[x]; dB[x] = d0 * sa + ds * A[x]; }
            break;
        }
        // LT: dA[a] = d0 sb + ds P(B > a), dB[b] = d0 sa + ds P(A < b); LE: >= and <=
        T acc = 0;
        for (int x = M - 1; x >= 0; x--) {
            if (code == LE) acc += B[x];
            dA[x] = d0 * sb + ds * acc;
            if (code == LT) acc += B[x];
        }
        acc = 0;
        for (int x = 0; x < M; x++) {
            if (code == LE) acc += A[x];
            dB[x] = d0 * sa + ds * acc;
            if (code == LT) acc += A[x];
        }
        break;
    }
    case MIN: case MAX: {
        // MIN: dA[x] = D[x] P(B >= x) + sum_{c < x} D[c] B[c];  dB[y] = sum_{c <= y} D[c] A[c] + D[y] P(A > y)
        // MAX: the same with the order of cells reversed
        bool mx = code == MAX;
        T db = 0, da = 0;
        for (int k = 0; k < M; k++) {          // from the low end (MIN) or the high end (MAX)
            int x = mx ? M - 1 - k : k;
            dA[x] = db;                        // sum over c strictly before x of D[c] B[c]
            db += D[x] * B[x];
            da += D[x] * A[x];
            dB[x] = da;                        // sum over c up to x of D[c] A[c]
        }
        T b_incl = 0, a_excl = 0;
        for (int k = 0; k < M; k++) {          // tail sums from the other end
            int x = mx ? k : M - 1 - k;
            b_incl += B[x];
            dA[x] += D[x] * b_incl;
            dB[x] += D[x] * a_excl;
            a_excl += A[x];
        }
        break;
    }
    }
}

// e^x for x <= 0 in float: Cephes' expf (range reduction by ln 2, degree-6 polynomial, relative error
// about 2e-7), written so that the softmax loop vectorizes; libm's expf, called per element, took
// three quarters of the forward pass. Below e^-87 (float's smallest normal) it returns about 1e-38.
static inline float exp_nonpositive(float x) {
    x = std::max(x, -87.0f);
    float t = x * 1.44269504088896341f;
    int n = (int)(t - 0.5f);                       // round to nearest (t <= 0)
    float f = x - (float)n * 0.693359375f + (float)n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    float y = p * f * f + f + 1.0f;
    int bits = (n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

static inline double exp_nonpositive(double x) { return std::exp(x); }

// w[:n] = softmax(logits[:n]), w[n:K] = 0 (the sources a gate may not read)
template <typename T>
static void softmax(const T* logits, T* w, int n, int K) {
    T top = logits[0], s = 0;
    for (int k = 1; k < n; k++) top = std::max(top, logits[k]);
    for (int k = 0; k < n; k++) w[k] = exp_nonpositive(logits[k] - top);
    for (int k = 0; k < n; k++) s += w[k];
    for (int k = 0; k < n; k++) w[k] /= s;
    std::fill(w + n, w + K, T(0));
}

// ---------------------------------------------------------------------------------------------
// One example's circuit, forward and backward. Shared by the circuit entry points (circuit.py's
// autograd node) and the fused timestep below.

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

// out[0:P] = sum_{k<n} w[k] rows[k][0:P] (rows P apart), accumulated in registers, 4 vectors at a time
template <typename T>
static inline void mix(const T* __restrict w, int n, const T* __restrict rows, int P, T* __restrict out) {
    typedef typename Lanes<T>::v v;
    const int nv = P / 8;
    for (int c0 = 0; c0 < nv; c0 += 4) {
        const int cn = std::min(4, nv - c0);
        v acc[4] = {};
        for (int k = 0; k < n; k++) {
            const T wk = w[k];
            const v* row = (const v*)(rows + (size_t)k * P) + c0;
            for (int c = 0; c < 4; c++)
                if (c < cn) acc[c] += wk * row[c];
        }
        for (int c = 0; c < cn; c++) ((v*)out)[c0 + c] = acc[c];
    }
}

// rows[k][0:P] += w[k] d[0:P] for k < n
template <typename T>
static inline void spread(const T* __restrict w, int n, const T* __restrict d, T* __restrict rows, int P) {
    typedef typename Lanes<T>::v v;
    const int nv = P / 8;
    for (int k = 0; k < n; k++) {
        const T wk = w[k];
        v* row = (v*)(rows + (size_t)k * P);
        for (int c = 0; c < nv; c++) row[c] += wk * ((const v*)d)[c];
    }
}

// out[j][0:L] = sum_{m<inner} A[j][m] B[m][0:L] for j < nrows (A rows lda apart, L a multiple of 8):
// the dot products of A's rows with the columns of B, without a horizontal sum per product
template <typename T>
static inline void dots(const T* __restrict A, int nrows, int lda, int inner, const T* __restrict B, int L,
                        T* __restrict out) {
    typedef typename Lanes<T>::v v;
    const int nv = L / 8;
    for (int j = 0; j < nrows; j++)
        for (int c0 = 0; c0 < nv; c0 += 4) {
            const int cn = std::min(4, nv - c0);
            v acc[4] = {};
            for (int m = 0; m < inner; m++) {
                const T a = A[(size_t)j * lda + m];
                const v* row = (const v*)(B + (size_t)m * L) + c0;
                for (int c = 0; c < 4; c++)
                    if (c < cn) acc[c] += a * row[c];
            }
            for (int c = 0; c < cn; c++) ((v*)(out + (size_t)j * L))[c0 + c] = acc[c];
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

// One example's circuit. V [K, P] (scratch): the registers, then each gate's output, and VT [P, K8]
// the same transposed, for the backward's dot products (when not null); AB [2Q, P]: the gate inputs;
// saved [G, M, M] (when not null): memory as each memory gate after the first WRITE saw it; the new
// registers [R, M] and memory [M, M], renormalized when asked. tmp: P cells of scratch.
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
        for (int a = 0; a < ar; a++) mix(W + (size_t)(2 * i + a) * K, R + i, V, P, AB + (size_t)(2 * i + a) * P);
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
    for (int r = 0; r < R; r++) {
        mix(U + (size_t)r * K, K, V, P, tmp);
        std::memcpy(new_regs + (size_t)r * M, tmp, sizeof(T) * M);
    }
    if (VT)                                // transposed while V is in cache
        for (int m = 0; m < P; m++)
            for (int k = 0; k < c.K8; k++) VT[(size_t)m * c.K8 + k] = k < K ? V[(size_t)k * P + m] : T(0);
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

// Per-example scratch of the circuit's backward. grads: the gradients of the 2Q gate inputs, then of
// the R new registers, rows P apart, so that a source's gradient is one mixture of consecutive rows.
template <typename T>
struct CircuitScratch {
    std::vector<T> dV, D, grads, dW, dU, wt;
    explicit CircuitScratch(const Circuit& c)
        : dV((size_t)c.R * c.P), D(c.P), grads((size_t)(2 * c.Q + c.R) * c.P, T(0)),
          dW((size_t)2 * c.Q * c.K8), dU((size_t)c.R * c.K8), wt(2 * c.Q + c.R) {}
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
    dots(s.dR(c), R, P, M, VT, K8, s.dU.data());
    const int w0 = first_write(c);
    int g = c.G;
    for (int i = Q - 1; i >= 0; i--) {
        const int ar = c.arity[i], code = c.codes[i];
        if (!ar) continue;
        const int j0 = 2 * (i + 1);
        mix(s.wt.data(), source_weights(c, W, U, R + i, j0, s.wt.data()), grads + (size_t)j0 * P, P, D);
        const T* A = AB + (size_t)(2 * i) * P;
        const T* B = AB + (size_t)(2 * i + ar - 1) * P;
        T* dA = grads + (size_t)(2 * i) * P;
        T* dB = grads + (size_t)(2 * i + 1) * P;
        if (code == READ) {
            const T* mem = i > w0 ? saved + (size_t)(--g) * M * M : mem_in;
            for (int p = 0; p < M; p++) {
                const T ap = A[p];
                const T* __restrict row = mem + (size_t)p * M;
                T* __restrict drow = d_mem + (size_t)p * M;
                T sum = 0;
                for (int m = 0; m < M; m++) {
                    sum += row[m] * D[m];
                    drow[m] += ap * D[m];
                }
                dA[p] = sum;
            }
        } else if (code == WRITE) {
            const T* mem = i > w0 ? saved + (size_t)(--g) * M * M : mem_in;
            for (int m = 0; m < M; m++) dB[m] = D[m];
            for (int p = 0; p < M; p++) {
                const T ap = A[p];
                const T* __restrict row = mem + (size_t)p * M;
                T* __restrict drow = d_mem + (size_t)p * M;
                T sum = 0;
                for (int m = 0; m < M; m++) {
                    const T d = drow[m];
                    sum += d * (B[m] - row[m]);
                    dB[m] += ap * d;
                    drow[m] = d * (1 - ap);
                }
                dA[p] = sum;
            }
        } else {
            gate_backward(code, M, A, B, D, dA, dB);
        }
    }
    for (int k = 0; k < R; k++)        // the registers before the step, from everything that read them
        mix(s.wt.data(), source_weights(c, W, U, k, 0, s.wt.data()), grads, P, s.dV.data() + (size_t)k * P);
    dots(grads, 2 * Q, P, M, VT, K8, s.dW.data());
}

template <typename T>
static void softmax_grad(const T* w, const T* dw, T* out, int n, T c) {
    T dot = 0;
    for (int k = 0; k < n; k++) dot += w[k] * dw[k];
    for (int k = 0; k < n; k++) {
        T d = w[k] * (dw[k] - dot);
        out[k] = c > 0 ? std::min(std::max(d, -c), c) : d;
    }
}

template <typename T>
static inline T clamp(T x, T c) { return c > 0 ? std::min(std::max(x, -c), c) : x; }

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

template <typename T>
static void forward(const T* arg_logits_, const T* reg_logits_, const T* regs_, const T* mem_in_, T* W_,
                    T* U_, T* V_, T* AB_, T* saved_, T* new_regs_, T* mem_, int N, int R, int Q, int M,
                    int G, const int* codes, const int* arity, const int* values, int renorm,
                    int threads) {
    const Circuit c = make_circuit(R, Q, M, G, codes, arity, values);
    const int K = c.K, P = c.P;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::vector<T> tmp(P), V((size_t)K * P);
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            T* W = W_ + (size_t)n * Q * 2 * K;
            T* U = U_ + (size_t)n * R * K;
            for (int j = 0; j < Q * 2; j++)
                softmax(arg_logits_ + ((size_t)n * Q * 2 + j) * K, W + (size_t)j * K, R + j / 2, K);
            for (int r = 0; r < R; r++)
                softmax(reg_logits_ + ((size_t)n * R + r) * K, U + (size_t)r * K, K, K);
            circuit_forward_one(c, W, U, regs_ + (size_t)n * R * M, mem_in_ + (size_t)n * M * M, V.data(),
                                V_ + (size_t)n * P * c.K8, AB_ + (size_t)n * Q * 2 * P,
                                saved_ ? saved_ + (size_t)n * G * M * M : nullptr, new_regs_ + (size_t)n * R * M,
                                mem_ + (size_t)n * M * M, renorm, tmp.data());
        }
    }
}

template <typename T>
static void backward(const T* W_, const T* U_, const T* V_, const T* AB_, const T* saved_, const T* mem_in_,
                     const T* d_regs_, const T* d_mem_out_, const T* d_W_, const T* d_U_, T c,
                     T* d_arg_logits_, T* d_reg_logits_, T* d_regs_in_, T* d_mem_, int N, int R, int Q,
                     int M, int G, const int* codes, const int* arity, int threads) {
    const Circuit ci = make_circuit(R, Q, M, G, codes, arity, nullptr);
    const int K = ci.K, P = ci.P, K8 = ci.K8;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        CircuitScratch<T> s(ci);
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            T* d_mem = d_mem_ + (size_t)n * M * M;
            load_d_registers(ci, d_regs_ ? d_regs_ + (size_t)n * R * M : nullptr, c, s);
            for (int j = 0; j < M * M; j++) d_mem[j] = d_mem_out_ ? clamp(d_mem_out_[(size_t)n * M * M + j], c) : T(0);
            const T* W = W_ + (size_t)n * Q * 2 * K;
            const T* U = U_ + (size_t)n * R * K;
            circuit_backward_one(ci, W, U, V_ + (size_t)n * P * K8, AB_ + (size_t)n * Q * 2 * P,
                                 saved_ + (size_t)n * G * M * M, mem_in_ + (size_t)n * M * M, d_mem, s);
            for (int j = 0; j < Q * 2; j++) {
                T* dw = &s.dW[(size_t)j * K8];
                if (d_W_)
                    for (int k = 0; k < K; k++) dw[k] += d_W_[((size_t)n * Q * 2 + j) * K + k];
                softmax_grad(W + (size_t)j * K, dw, d_arg_logits_ + ((size_t)n * Q * 2 + j) * K, K, c);
            }
            for (int r = 0; r < R; r++) {
                T* du = &s.dU[(size_t)r * K8];
                if (d_U_)
                    for (int k = 0; k < K; k++) du[k] += d_U_[((size_t)n * R + r) * K + k];
                softmax_grad(U + (size_t)r * K, du, d_reg_logits_ + ((size_t)n * R + r) * K, K, c);
            }
            store_d_registers(ci, s, d_regs_in_ + (size_t)n * R * M);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fused timestep: controller, head, softmaxes, circuit, stop probability and the step's
// log-likelihood, forward and backward, for examples in blocks of up to EB of one seed.
// machine.py's `step` (the controller's layers, the head, circuit.py) is the definition; the fused
// node in fused.py hands this code packed weights and buffers. The head computes only the logits a
// gate or register may use; parameter gradients are left to the caller: each layer's input rows and
// output gradients are written into [N, Tmax, width] buffers at column t, and one batched product
// per layer over all timesteps gives the weight gradients.

constexpr int EB = 8;    // examples of one seed whose controller rows are multiplied together
constexpr int JB = 16;   // output columns per register block

// Y[e, j] = bias[j] + sum_k X[e, k] W[k, j] for e < ne, with W [in, out] row-major. X must hold EB
// rows (what the rows from ne on hold is computed and dropped), so the EB accumulators of a block of
// JB columns stay in registers while W's rows stream past once per block of examples.
template <typename T>
static void rows_matmul_tail(int ne, const T* X, int ldx, const T* W, const T* bias, int in, int out, int j0,
                             T* Y, int ldy) {
    for (int e = 0; e < ne; e++)
        for (int j = j0; j < out; j++) {
            T s = bias ? bias[j] : T(0);
            for (int k = 0; k < in; k++) s += X[(size_t)e * ldx + k] * W[(size_t)k * out + j];
            Y[(size_t)e * ldy + j] = s;
        }
}

template <typename T>
static void rows_matmul(int ne, const T* X, int ldx, const T* W, const T* bias, int in, int out, T* Y, int ldy) {
    rows_matmul_tail(ne, X, ldx, W, bias, in, out, 0, Y, ldy);
}

// float: the same with GCC/Clang vector types (JB = 16 floats, whatever SIMD width the machine has);
// the compiler's own vectorizer picked the wrong loop here and ran four times slower.
typedef float vfloat __attribute__((vector_size(4 * JB)));
typedef float vfloat_u __attribute__((vector_size(4 * JB), aligned(4)));

template <>
void rows_matmul<float>(int ne, const float* X, int ldx, const float* W, const float* bias, int in, int out,
                        float* Y, int ldy) {
    int j0 = 0;
    for (; j0 + JB <= out; j0 += JB) {
        vfloat acc[EB];
        vfloat b0 = bias ? *(const vfloat_u*)(bias + j0) : vfloat{};
        for (int e = 0; e < EB; e++) acc[e] = b0;
        const float* w = W + j0;
        for (int k = 0; k < in; k++, w += out) {
            const vfloat wk = *(const vfloat_u*)w;
            for (int e = 0; e < EB; e++) acc[e] += X[(size_t)e * ldx + k] * wk;
        }
        for (int e = 0; e < ne; e++) *(vfloat_u*)(Y + (size_t)e * ldy + j0) = acc[e];
    }
    rows_matmul_tail(ne, X, ldx, W, bias, in, out, j0, Y, ldy);
}

static inline float exp_any(float x) {   // e^x for any x, from the non-positive branch
    return x <= 0 ? exp_nonpositive(x) : 1.0f / exp_nonpositive(-x);
}
static inline double exp_any(double x) { return std::exp(x); }

template <typename T>
static inline T sigmoid(T z) {
    const T e = exp_nonpositive(-std::abs(z)), r = T(1) / (T(1) + e);     // e in (0, 1]
    return z >= 0 ? r : e * r;
}

static inline float tanh_(float x) {
    float e = exp_nonpositive(-2.0f * std::abs(x));
    return std::copysign((1.0f - e) / (1.0f + e), x);
}
static inline double tanh_(double x) { return std::tanh(x); }

struct Net {
    int kind;               // 0: MLP (l1, l2, head), 1: LSTM (inp, gates, head)
    int S, B, H, O, Tmax, t;
    int in[3], out[3];
};

// Per-thread scratch for one block.
template <typename T>
struct Scratch {
    std::vector<T> x[3], y[3], dO, d0, dY, dX, tmp, lstm, V;
    CircuitScratch<T> circuit;
    Scratch(const Net& net, const Circuit& c)
        : tmp(c.P), lstm((size_t)6 * net.H), V((size_t)c.K * c.P), circuit(c) {
        for (int l = 0; l < 3; l++) {
            x[l].assign((size_t)EB * net.in[l], T(0));
            y[l].assign((size_t)EB * net.out[l], T(0));
        }
        int widest = std::max(std::max(net.in[1], net.out[1]), std::max(net.O, net.in[2]));
        dO.assign((size_t)EB * net.O, T(0));
        d0.assign((size_t)EB * net.H, T(0));
        dY.assign((size_t)EB * widest, T(0));
        dX.assign((size_t)EB * widest, T(0));
    }
};

// Runs body(scratch, first example, examples, seed) over this call's examples in blocks of up to EB
// examples of one seed, each thread over its own contiguous share.
template <typename T, typename Body>
static void over_blocks(const Net& net, const Circuit& c, int N, int threads, Body&& body) {
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        Scratch<T> s(net, c);
        int n0, n1;
        share(N, threads, n0, n1);
        for (int b0 = n0; b0 < n1;) {
            const int seed = b0 / net.B;
            const int ne = std::min(std::min(n1, (seed + 1) * net.B), b0 + EB) - b0;
            body(s, b0, ne, seed);
            b0 += ne;
        }
    }
}

// Pointers of a forward call, in the order fused.py passes them.
template <typename T>
struct FwdArgs {
    const int *codes, *arity, *values;
    const T *Wf[3], *bf[3];
    const T *regs_in, *mem_in, *h_in, *c_in;
    const int* y;
    const T* mask;
    T *regs_out, *mem_out, *h_out, *c_out, *f_out, *ll_out, *W, *U, *V, *AB, *saved, *ctl_save;
    T* X[3];
};

template <typename T>
static void fused_forward(const Net& net, const Circuit& c, const FwdArgs<T>& a, int N, int renorm, T eps,
                          int threads) {
    const int R = c.R, Q = c.Q, K = c.K, M = c.M, H = net.H, O = net.O;
    over_blocks<T>(net, c, N, threads, [&](Scratch<T>& s, int b0, int ne, int seed) {
        const T* Wf[3];
        const T* bf[3];
        for (int l = 0; l < 3; l++) {
            Wf[l] = a.Wf[l] + (size_t)seed * net.in[l] * net.out[l];
            bf[l] = a.bf[l] + (size_t)seed * net.out[l];
        }
        // controller input: P(r = 0) of each register
        for (int e = 0; e < ne; e++)
            for (int r = 0; r < R; r++) s.x[0][(size_t)e * R + r] = a.regs_in[((size_t)(b0 + e) * R + r) * M];
        rows_matmul(ne, s.x[0].data(), R, Wf[0], bf[0], net.in[0], net.out[0], s.y[0].data(), net.out[0]);
        for (int e = 0; e < ne; e++)         // relu, into the middle layer's input
            for (int j = 0; j < H; j++) s.x[1][(size_t)e * net.in[1] + j] = std::max(s.y[0][(size_t)e * H + j], T(0));
        if (net.kind == 1)
            for (int e = 0; e < ne; e++)
                std::memcpy(&s.x[1][(size_t)e * net.in[1] + H], a.h_in + (size_t)(b0 + e) * H, sizeof(T) * H);
        rows_matmul(ne, s.x[1].data(), net.in[1], Wf[1], bf[1], net.in[1], net.out[1], s.y[1].data(), net.out[1]);
        for (int e = 0; e < ne; e++) {
            const T* z = &s.y[1][(size_t)e * net.out[1]];
            T* x2 = &s.x[2][(size_t)e * H];
            if (net.kind == 0) {
                for (int j = 0; j < H; j++) x2[j] = std::max(z[j], T(0));
            } else {                          // LSTM cell: z = (i, f, g, o)
                const size_t n = b0 + e;
                const T* c_prev = a.c_in + n * H;
                T* c_new = a.c_out + n * H;
                // (i, f, g, o, c_prev, tanh c) for the backward, or scratch; branch-free loops vectorize
                T* __restrict keep = a.ctl_save ? a.ctl_save + n * 6 * H : s.lstm.data();
                for (int j = 0; j < 2 * H; j++) keep[j] = sigmoid(z[j]);
                for (int j = 2 * H; j < 3 * H; j++) keep[j] = tanh_(z[j]);
                for (int j = 3 * H; j < 4 * H; j++) keep[j] = sigmoid(z[j]);
                for (int j = 0; j < H; j++) {
                    const T cn = keep[H + j] * c_prev[j] + keep[j] * keep[2 * H + j], tc = tanh_(cn);
                    c_new[j] = cn;
                    x2[j] = keep[3 * H + j] * tc;
                    keep[4 * H + j] = c_prev[j];
                    keep[5 * H + j] = tc;
                }
                std::memcpy(a.h_out + n * H, x2, sizeof(T) * H);
            }
        }
        rows_matmul(ne, s.x[2].data(), H, Wf[2], bf[2], H, O, s.y[2].data(), O);
        if (a.X[0])
            for (int l = 0; l < 3; l++)
                for (int e = 0; e < ne; e++)
                    std::memcpy(a.X[l] + ((size_t)(b0 + e) * net.Tmax + net.t) * net.in[l],
                                &s.x[l][(size_t)e * net.in[l]], sizeof(T) * net.in[l]);
        for (int e = 0; e < ne; e++) {
            const size_t n = b0 + e;
            const T* logits = &s.y[2][(size_t)e * O];
            T* W = a.W + n * Q * 2 * K;
            T* U = a.U + n * R * K;
            int off = 0;
            for (int i = 0; i < Q; i++)
                for (int j = 0; j < 2; j++) {
                    T* w = W + (size_t)(2 * i + j) * K;
                    if (j < c.arity[i]) {
                        softmax(logits + off, w, R + i, K);
                        off += R + i;
                    } else {
                        std::fill(w, w + K, T(0));
                    }
                }
            for (int r = 0; r < R; r++) softmax(logits + off + r * K, U + (size_t)r * K, K, K);
            a.f_out[n] = sigmoid(logits[O - 1]);
            T* mem = a.mem_out + n * M * M;
            circuit_forward_one(c, W, U, a.regs_in + n * R * M, a.mem_in + n * M * M, s.V.data(),
                                a.V ? a.V + n * c.P * c.K8 : nullptr, a.AB + n * Q * 2 * c.P, a.saved ? a.saved + n * c.G * M * M : nullptr,
                                a.regs_out + n * R * M, mem, renorm, s.tmp.data());
            if (a.ll_out) {
                T ll = 0;
                for (int i = 0; i < M; i++)
                    ll += std::log(std::max(mem[(size_t)i * M + a.y[n * M + i]], eps)) * a.mask[n * M + i];
                a.ll_out[n] = ll;
            }
        }
    });
}

template <typename T>
struct BwdArgs {
    const int *codes, *arity, *values;
    const T* Wt[3];
    const T *W, *U, *V, *AB, *saved, *mem_in, *mem_out, *f, *ctl_save;
    const int* y;
    const T* mask;
    const T* X[3];
    const T *d_regs_out, *d_mem_out, *d_h_out, *d_c_out, *d_f, *d_ll, *d_W, *d_U;
    T *d_regs_in, *d_mem_in, *d_h_in, *d_c_in;
    T* D[3];
};

template <typename T>
static void fused_backward(const Net& net, const Circuit& c, const BwdArgs<T>& a, int N, T clipc, T eps,
                           int threads) {
    const int R = c.R, Q = c.Q, K = c.K, M = c.M, H = net.H, O = net.O;
    over_blocks<T>(net, c, N, threads, [&](Scratch<T>& s, int b0, int ne, int seed) {
        for (int e = 0; e < ne; e++) {       // the circuit, back to the logits
            const size_t n = b0 + e;
            if ((int)n + 1 < N) {              // what the forward saved comes from main memory: ask early
                const size_t m = n + 1;
                prefetch(a.W + m * Q * 2 * K, Q * 2 * K);
                prefetch(a.U + m * R * K, R * K);
                prefetch(a.V + m * c.P * c.K8, c.P * c.K8);
                prefetch(a.AB + m * Q * 2 * c.P, Q * 2 * c.P);
                prefetch(a.mem_in + m * M * M, M * M);
                prefetch(a.mem_out + m * M * M, M * M);
                if (a.d_mem_out) prefetch(a.d_mem_out + m * M * M, M * M);
            }
            T* dm = a.d_mem_in + n * M * M;
            if (a.d_mem_out) std::memcpy(dm, a.d_mem_out + n * M * M, sizeof(T) * M * M);
            else std::fill(dm, dm + (size_t)M * M, T(0));
            if (a.d_ll) {                     // ll = sum_i mask_i log(max(mem[i, y_i], eps))
                const T* mem = a.mem_out + n * M * M;
                for (int i = 0; i < M; i++) {
                    const size_t at = (size_t)i * M + a.y[n * M + i];
                    if (mem[at] >= eps) dm[at] += a.d_ll[n] * a.mask[n * M + i] / mem[at];
                }
            }
            for (int j = 0; j < M * M; j++) dm[j] = clamp(dm[j], clipc);
            CircuitScratch<T>& cs = s.circuit;
            load_d_registers(c, a.d_regs_out ? a.d_regs_out + n * R * M : nullptr, clipc, cs);
            const T* W = a.W + n * Q * 2 * K;
            const T* U = a.U + n * R * K;
            circuit_backward_one(c, W, U, a.V + n * c.P * c.K8, a.AB + n * Q * 2 * c.P, a.saved + n * c.G * M * M,
                                 a.mem_in + n * M * M, dm, cs);
            T* dO = &s.dO[(size_t)e * O];
            int off = 0;
            for (int i = 0; i < Q; i++)
                for (int j = 0; j < c.arity[i]; j++) {
                    T* dw = &cs.dW[(size_t)(2 * i + j) * c.K8];
                    if (a.d_W)
                        for (int k = 0; k < R + i; k++) dw[k] += a.d_W[(n * Q * 2 + 2 * i + j) * K + k];
                    softmax_grad(W + (size_t)(2 * i + j) * K, dw, dO + off, R + i, clipc);
                    off += R + i;
                }
            for (int r = 0; r < R; r++) {
                T* du = &cs.dU[(size_t)r * c.K8];
                if (a.d_U)
                    for (int k = 0; k < K; k++) du[k] += a.d_U[(n * R + r) * K + k];
                softmax_grad(U + (size_t)r * K, du, dO + off + r * K, K, clipc);
            }
            const T f = a.f[n];
            dO[O - 1] = a.d_f ? clamp(a.d_f[n] * f * (1 - f), clipc) : T(0);
            store_d_registers(c, cs, a.d_regs_in + n * R * M);
            std::memcpy(a.D[2] + (n * net.Tmax + net.t) * O, dO, sizeof(T) * O);
        }
        const T* Wt[3];
        for (int l = 0; l < 3; l++) Wt[l] = a.Wt[l] + (size_t)seed * net.in[l] * net.out[l];
        // head: d(head input) = dO W^T
        rows_matmul(ne, s.dO.data(), O, Wt[2], (const T*)nullptr, O, H, s.dX.data(), H);
        for (int e = 0; e < ne; e++) {
            const size_t n = b0 + e, row = n * net.Tmax + net.t;
            const T* dx2 = &s.dX[(size_t)e * H];
            T* d1 = &s.dY[(size_t)e * net.out[1]];
            if (net.kind == 0) {              // a2 = relu(l2 pre-activation)
                const T* a2 = a.X[2] + row * H;
                for (int j = 0; j < H; j++) d1[j] = a2[j] > 0 ? dx2[j] : T(0);
            } else {
                const T* keep = a.ctl_save + n * 6 * H;
                for (int j = 0; j < H; j++) {
                    T i = keep[j], f = keep[H + j], g = keep[2 * H + j], o = keep[3 * H + j];
                    T c_prev = keep[4 * H + j], tc = keep[5 * H + j];
                    T dh = dx2[j] + (a.d_h_out ? a.d_h_out[n * H + j] : T(0));
                    T dc = (a.d_c_out ? a.d_c_out[n * H + j] : T(0)) + dh * o * (1 - tc * tc);
                    d1[j] = dc * g * (i * (1 - i));
                    d1[H + j] = dc * c_prev * (f * (1 - f));
                    d1[2 * H + j] = dc * i * (1 - g * g);
                    d1[3 * H + j] = dh * tc * (o * (1 - o));
                    a.d_c_in[n * H + j] = dc * f;
                }
            }
            std::memcpy(a.D[1] + row * net.out[1], d1, sizeof(T) * net.out[1]);
        }
        rows_matmul(ne, s.dY.data(), net.out[1], Wt[1], (const T*)nullptr, net.out[1], net.in[1], s.dX.data(), net.in[1]);
        for (int e = 0; e < ne; e++) {
            const size_t n = b0 + e, row = n * net.Tmax + net.t;
            const T* dx1 = &s.dX[(size_t)e * net.in[1]];
            const T* a1 = a.X[1] + row * net.in[1];
            T* d0 = &s.d0[(size_t)e * H];
            for (int j = 0; j < H; j++) d0[j] = a1[j] > 0 ? dx1[j] : T(0);
            if (net.kind == 1) std::memcpy(a.d_h_in + n * H, dx1 + H, sizeof(T) * H);
            std::memcpy(a.D[0] + row * H, d0, sizeof(T) * H);
        }
        rows_matmul(ne, s.d0.data(), H, Wt[0], (const T*)nullptr, H, R, s.dX.data(), R);
        for (int e = 0; e < ne; e++)
            for (int r = 0; r < R; r++) a.d_regs_in[((size_t)(b0 + e) * R + r) * M] += s.dX[(size_t)e * R + r];
    });
}

static void net_dims(const int* v, Net& net, Circuit& c, int& N, int& renorm, int& threads) {
    // v: N, S, B, R, Q, M, G, H, O, kind, renorm, threads, Tmax, t
    N = v[0];
    c = make_circuit(v[3], v[4], v[5], v[6], nullptr, nullptr, nullptr);
    net.S = v[1]; net.B = v[2]; net.H = v[7]; net.O = v[8]; net.kind = v[9];
    renorm = v[10]; threads = v[11]; net.Tmax = v[12]; net.t = v[13];
    const int H = net.H;
    int in[3] = {c.R, net.kind ? 2 * H : H, H}, out[3] = {H, net.kind ? 4 * H : H, net.O};
    for (int l = 0; l < 3; l++) { net.in[l] = in[l]; net.out[l] = out[l]; }
}

template <typename T>
static void step_forward(const int* v, void** p, double eps) {
    Net net; Circuit c; int N, renorm, threads;
    net_dims(v, net, c, N, renorm, threads);
    FwdArgs<T> a;
    int k = 0;
    a.codes = (const int*)p[k++]; a.arity = (const int*)p[k++]; a.values = (const int*)p[k++];
    c.codes = a.codes; c.arity = a.arity; c.values = a.values;
    for (int l = 0; l < 3; l++) { a.Wf[l] = (const T*)p[k++]; a.bf[l] = (const T*)p[k++]; }
    a.regs_in = (const T*)p[k++]; a.mem_in = (const T*)p[k++]; a.h_in = (const T*)p[k++]; a.c_in = (const T*)p[k++];
    a.y = (const int*)p[k++]; a.mask = (const T*)p[k++];
    a.regs_out = (T*)p[k++]; a.mem_out = (T*)p[k++]; a.h_out = (T*)p[k++]; a.c_out = (T*)p[k++];
    a.f_out = (T*)p[k++]; a.ll_out = (T*)p[k++]; a.W = (T*)p[k++]; a.U = (T*)p[k++]; a.V = (T*)p[k++];
    a.AB = (T*)p[k++]; a.saved = (T*)p[k++]; a.ctl_save = (T*)p[k++];
    for (int l = 0; l < 3; l++) a.X[l] = (T*)p[k++];
    fused_forward<T>(net, c, a, N, renorm, (T)eps, threads);
}

template <typename T>
static void step_backward(const int* v, void** p, double clipc, double eps) {
    Net net; Circuit c; int N, renorm, threads;
    net_dims(v, net, c, N, renorm, threads);
    BwdArgs<T> a;
    int k = 0;
    a.codes = (const int*)p[k++]; a.arity = (const int*)p[k++]; a.values = (const int*)p[k++];
    c.codes = a.codes; c.arity = a.arity; c.values = a.values;
    for (int l = 0; l < 3; l++) a.Wt[l] = (const T*)p[k++];
    a.W = (const T*)p[k++]; a.U = (const T*)p[k++]; a.V = (const T*)p[k++]; a.AB = (const T*)p[k++];
    a.saved = (const T*)p[k++]; a.mem_in = (const T*)p[k++]; a.mem_out = (const T*)p[k++]; a.f = (const T*)p[k++]; a.ctl_save = (const T*)p[k++];
    a.y = (const int*)p[k++]; a.mask = (const T*)p[k++];
    for (int l = 0; l < 3; l++) a.X[l] = (const T*)p[k++];
    a.d_regs_out = (const T*)p[k++]; a.d_mem_out = (const T*)p[k++]; a.d_h_out = (const T*)p[k++];
    a.d_c_out = (const T*)p[k++]; a.d_f = (const T*)p[k++]; a.d_ll = (const T*)p[k++];
    a.d_W = (const T*)p[k++]; a.d_U = (const T*)p[k++];
    a.d_regs_in = (T*)p[k++]; a.d_mem_in = (T*)p[k++]; a.d_h_in = (T*)p[k++]; a.d_c_in = (T*)p[k++];
    for (int l = 0; l < 3; l++) a.D[l] = (T*)p[k++];
    fused_backward<T>(net, c, a, N, (T)clipc, (T)eps, threads);
}

extern "C" {
#define NRAM_EXPORT(T, suffix)                                                                        \
    void circuit_forward_##suffix(const T* arg_logits, const T* reg_logits, const T* regs,            \
                                  const T* mem_in, T* W, T* U, T* V, T* AB, T* saved, T* new_regs,     \
                                  T* mem, int N, int R, int Q, int M, int G, const int* codes,         \
                                  const int* arity, const int* values, int renorm, int threads) {      \
        forward<T>(arg_logits, reg_logits, regs, mem_in, W, U, V, AB, saved, new_regs, mem, N, R, Q,   \
                   M, G, codes, arity, values, renorm, threads);                                       \
    }                                                                                                  \
    void circuit_backward_##suffix(const T* W, const T* U, const T* V, const T* AB, const T* saved,    \
                                   const T* mem_in, const T* d_regs, const T* d_mem_out, const T* d_W, const T* d_U,    \
                                   double c, T* d_arg_logits, T* d_reg_logits, T* d_regs_in, T* d_mem, \
                                   int N, int R, int Q, int M, int G, const int* codes,                \
                                   const int* arity, int threads) {                                    \
        backward<T>(W, U, V, AB, saved, mem_in, d_regs, d_mem_out, d_W, d_U, (T)c, d_arg_logits,               \
                    d_reg_logits, d_regs_in, d_mem, N, R, Q, M, G, codes, arity, threads);             \
    }                                                                                                  \
    void step_forward_##suffix(const int* ints, void** ptrs, double eps) {                             \
        step_forward<T>(ints, ptrs, eps);                                                              \
    }                                                                                                  \
    void step_backward_##suffix(const int* ints, void** ptrs, double clip, double eps) {               \
        step_backward<T>(ints, ptrs, clip, eps);                                                       \
    }
NRAM_EXPORT(float, f32)
NRAM_EXPORT(double, f64)
}
