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
    case INC:
        for (int c = 0; c < M; c++) out[c] = A[(c - 1 + M) % M];
        break;
    case DEC:
        for (int c = 0; c < M; c++) out[c] = A[(c + 1) % M];
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
    case INC:
        for (int a = 0; a < M; a++) dA[a] = D[(a + 1) % M];
        break;
    case DEC:
        for (int a = 0; a < M; a++) dA[a] = D[(a - 1 + M) % M];
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

template <typename T>
static void forward(const T* arg_logits_, const T* reg_logits_, const T* regs_, const T* mem_in_, T* W_,
                    T* U_, T* V_, T* AB_, T* saved_, T* new_regs_, T* mem_, int N, int R, int Q, int M,
                    int G, const int* codes, const int* arity, const int* values, int renorm,
                    int threads) {
    const int K = R + Q;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int n = 0; n < N; n++) {
        T* W = W_ + (size_t)n * Q * 2 * K;
        T* U = U_ + (size_t)n * R * K;
        for (int j = 0; j < Q * 2; j++)
            softmax(arg_logits_ + ((size_t)n * Q * 2 + j) * K, W + (size_t)j * K, R + j / 2, K);
        for (int r = 0; r < R; r++)
            softmax(reg_logits_ + ((size_t)n * R + r) * K, U + (size_t)r * K, K, K);
        T* V = V_ + (size_t)n * K * M;
        T* AB = AB_ + (size_t)n * Q * 2 * M;
        T* saved = saved_ ? saved_ + (size_t)n * G * M * M : nullptr;
        T* mem = mem_ + (size_t)n * M * M;
        std::memcpy(mem, mem_in_ + (size_t)n * M * M, sizeof(T) * M * M);
        std::memcpy(V, regs_ + (size_t)n * R * M, sizeof(T) * R * M);
        int g = 0;
        for (int i = 0; i < Q; i++) {
            T* out = V + (size_t)(R + i) * M;
            for (int a = 0; a < arity[i]; a++) {
                T* x = AB + (size_t)(2 * i + a) * M;
                const T* w = W + (size_t)(2 * i + a) * K;
                std::fill(x, x + M, T(0));
                for (int k = 0; k < R + i; k++)
                    for (int m = 0; m < M; m++) x[m] += w[k] * V[(size_t)k * M + m];
            }
            const T* A = AB + (size_t)(2 * i) * M;
            const T* B = arity[i] ? AB + (size_t)(2 * i + arity[i] - 1) * M : A;
            if (saved_ && (codes[i] == READ || codes[i] == WRITE))   // no saving when no gradient is wanted
                std::memcpy(saved + (size_t)(g++) * M * M, mem, sizeof(T) * M * M);
            if (codes[i] == READ) {
                std::fill(out, out + M, T(0));
                for (int p = 0; p < M; p++)
                    for (int m = 0; m < M; m++) out[m] += A[p] * mem[p * M + m];
            } else if (codes[i] == WRITE) {
                for (int p = 0; p < M; p++)
                    for (int m = 0; m < M; m++) mem[p * M + m] += A[p] * (B[m] - mem[p * M + m]);
                std::memcpy(out, B, sizeof(T) * M);
            } else {
                gate_forward(codes[i], M, values[i], A, B, out);
            }
        }
        T* nr = new_regs_ + (size_t)n * R * M;
        for (int r = 0; r < R; r++) {
            T* row = nr + (size_t)r * M;
            std::fill(row, row + M, T(0));
            for (int k = 0; k < K; k++)
                for (int m = 0; m < M; m++) row[m] += U[r * K + k] * V[(size_t)k * M + m];
        }
        if (renorm) {
            for (int r = 0; r < R + M; r++) {
                T* row = r < R ? nr + (size_t)r * M : mem + (size_t)(r - R) * M;
                T s = 0;
                for (int m = 0; m < M; m++) s += row[m];
                for (int m = 0; m < M; m++) row[m] /= s;
            }
        }
    }
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
static void backward(const T* W_, const T* U_, const T* V_, const T* AB_, const T* saved_,
                     const T* d_regs_, const T* d_mem_out_, const T* d_W_, const T* d_U_, T c,
                     T* d_arg_logits_, T* d_reg_logits_, T* d_regs_in_, T* d_mem_, int N, int R, int Q,
                     int M, int G, const int* codes, const int* arity, int threads) {
    const int K = R + Q;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int n = 0; n < N; n++) {
        const T* W = W_ + (size_t)n * Q * 2 * K;
        const T* U = U_ + (size_t)n * R * K;
        const T* V = V_ + (size_t)n * K * M;
        const T* AB = AB_ + (size_t)n * Q * 2 * M;
        const T* saved = saved_ + (size_t)n * G * M * M;
        T* d_mem = d_mem_ + (size_t)n * M * M;
        std::vector<T> dV((size_t)K * M, T(0)), dR((size_t)R * M, T(0)), dAB((size_t)2 * M, T(0));
        std::vector<T> dW((size_t)Q * 2 * K, T(0)), dU((size_t)R * K, T(0));
        auto clip = [c](T x) { return c > 0 ? std::min(std::max(x, -c), c) : x; };
        if (d_regs_)
            for (int j = 0; j < R * M; j++) dR[j] = clip(d_regs_[(size_t)n * R * M + j]);
        for (int j = 0; j < M * M; j++) d_mem[j] = d_mem_out_ ? clip(d_mem_out_[(size_t)n * M * M + j]) : T(0);
        for (int r = 0; r < R; r++)        // new registers = U V
            for (int k = 0; k < K; k++) {
                T s = 0;
                for (int m = 0; m < M; m++) {
                    dV[(size_t)k * M + m] += U[r * K + k] * dR[r * M + m];
                    s += dR[r * M + m] * V[(size_t)k * M + m];
                }
                dU[r * K + k] = s;
            }
        int g = G;
        for (int i = Q - 1; i >= 0; i--) {
            if (!arity[i]) continue;
            const T* D = &dV[(size_t)(R + i) * M];
            const T* A = AB + (size_t)(2 * i) * M;
            const T* B = AB + (size_t)(2 * i + arity[i] - 1) * M;
            T* dA = &dAB[0];
            T* dB = &dAB[M];
            std::fill(dAB.begin(), dAB.end(), T(0));
            if (codes[i] == READ) {
                const T* mem = saved + (size_t)(--g) * M * M;
                for (int p = 0; p < M; p++) {
                    T s = 0;
                    for (int m = 0; m < M; m++) {
                        s += mem[p * M + m] * D[m];
                        d_mem[p * M + m] += A[p] * D[m];
                    }
                    dA[p] = s;
                }
            } else if (codes[i] == WRITE) {
                const T* mem = saved + (size_t)(--g) * M * M;
                for (int m = 0; m < M; m++) dB[m] = D[m];
                for (int p = 0; p < M; p++) {
                    T s = 0;
                    for (int m = 0; m < M; m++) {
                        T d = d_mem[p * M + m];
                        s += d * (B[m] - mem[p * M + m]);
                        dB[m] += A[p] * d;
                        d_mem[p * M + m] = d * (1 - A[p]);
                    }
                    dA[p] = s;
                }
            } else {
                gate_backward(codes[i], M, A, B, D, dA, dB);
            }
            for (int a = 0; a < arity[i]; a++) {   // (A, B) = W[i] V[:R+i]
                const T* d = &dAB[(size_t)a * M];
                const T* w = W + (size_t)(2 * i + a) * K;
                T* dw = &dW[(size_t)(2 * i + a) * K];
                for (int k = 0; k < R + i; k++) {
                    T s = 0;
                    for (int m = 0; m < M; m++) {
                        dV[(size_t)k * M + m] += w[k] * d[m];
                        s += d[m] * V[(size_t)k * M + m];
                    }
                    dw[k] = s;
                }
            }
        }
        if (d_W_)
            for (int j = 0; j < Q * 2 * K; j++) dW[j] += d_W_[(size_t)n * Q * 2 * K + j];
        if (d_U_)
            for (int j = 0; j < R * K; j++) dU[j] += d_U_[(size_t)n * R * K + j];
        for (int j = 0; j < Q * 2; j++)
            softmax_grad(W + (size_t)j * K, &dW[(size_t)j * K], d_arg_logits_ + ((size_t)n * Q * 2 + j) * K, K, c);
        for (int r = 0; r < R; r++)
            softmax_grad(U + (size_t)r * K, &dU[(size_t)r * K], d_reg_logits_ + ((size_t)n * R + r) * K, K, c);
        std::memcpy(d_regs_in_ + (size_t)n * R * M, dV.data(), sizeof(T) * R * M);
    }
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
                                   const T* d_regs, const T* d_mem_out, const T* d_W, const T* d_U,    \
                                   double c, T* d_arg_logits, T* d_reg_logits, T* d_regs_in, T* d_mem, \
                                   int N, int R, int Q, int M, int G, const int* codes,                \
                                   const int* arity, int threads) {                                    \
        backward<T>(W, U, V, AB, saved, d_regs, d_mem_out, d_W, d_U, (T)c, d_arg_logits,               \
                    d_reg_logits, d_regs_in, d_mem, N, R, Q, M, G, codes, arity, threads);             \
    }
NRAM_EXPORT(float, f32)
NRAM_EXPORT(double, f64)
}
