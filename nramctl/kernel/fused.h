// The fused timestep: controller, head, softmaxes, circuit, stop probability and the step's
// log-likelihood, forward and backward, for examples in blocks of up to EB of one seed.
// machine.py's `step` (the controller's layers, the head, circuit.py) is the definition; the fused
// node in fused.py hands this code packed weights and buffers. The head computes only the logits a
// gate or register may use; parameter gradients are left to the caller: each layer's input rows and
// output gradients are written into [S, rows, width] buffers, one row per example and step that ran
// (Net::row), and one batched product per layer over all timesteps gives the weight gradients.
#pragma once
#include "circuit.h"

// EB: examples of one seed whose controller rows are multiplied together, in register tiles of
// TILE_RB examples x TILE_CB vectors of VW floats (the machine's SIMD width; rows_matmul<float>)
#if defined(__AVX512F__)
constexpr int EB = 8, VW = 16, TILE_RB = 8, TILE_CB = 1;
#else
constexpr int EB = 12, VW = 8, TILE_RB = 6, TILE_CB = 2;
#endif

// Y[e, j] = bias[j] + sum_k X[e, k] W[k, j] for e < ne, with W [in, out] row-major. X must hold EB
// rows (what the rows from ne on hold may be computed and dropped).
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

// float: the same with GCC/Clang vector types of the machine's SIMD width (VW floats), in register
// tiles of TILE_RB examples x TILE_CB vectors whose accumulators, with the tile's vectors of W and one
// broadcast of X, stay in registers while W's rows stream past once per tile. A tile of 8 x 16 floats
// on every machine (as before) spilled on AVX2, whose 16 vector registers hold 8 x 2 accumulators and
// nothing else, and ran this product at a third of the speed. Measured on AVX2 (the eight-seed
// training step, docs/RESULTS.md): 6 x 2 vectors (blocks of 12 examples) 2-3% faster than 8 x 1,
// which beat 4 x 2, 4 x 3 and 2 x 4 by 3-5%; AVX-512 keeps its 8 x 1 (of 16 floats). Every output is
// bias + sum_k X[e, k] W[k, j] in k order whatever the tile, so all tiles give the same bits.
typedef float vfloat __attribute__((vector_size(4 * VW)));
typedef float vfloat_u __attribute__((vector_size(4 * VW), aligned(4)));

// Rows [e0, e0 + RB) (those from ne on are computed and dropped), columns [j0, j0 + CB * VW).
template <int RB, int CB>
static inline void tile(int e0, int ne, const float* X, int ldx, const float* W, const float* bias, int in,
                        int out, int j0, float* Y, int ldy) {
    vfloat acc[RB][CB];
    for (int c = 0; c < CB; c++) {
        const vfloat b = bias ? *(const vfloat_u*)(bias + j0 + c * VW) : vfloat{};
        for (int r = 0; r < RB; r++) acc[r][c] = b;
    }
    const float* x = X + (size_t)e0 * ldx;
    const float* w = W + j0;
    for (int k = 0; k < in; k++, w += out) {
        vfloat wk[CB];
        for (int c = 0; c < CB; c++) wk[c] = *(const vfloat_u*)(w + c * VW);
        for (int r = 0; r < RB; r++) {
            const float xr = x[(size_t)r * ldx + k];
            for (int c = 0; c < CB; c++) acc[r][c] += xr * wk[c];
        }
    }
    for (int r = 0; r < RB && e0 + r < ne; r++)
        for (int c = 0; c < CB; c++) *(vfloat_u*)(Y + (size_t)(e0 + r) * ldy + j0 + c * VW) = acc[r][c];
}

template <>
void rows_matmul<float>(int ne, const float* X, int ldx, const float* W, const float* bias, int in, int out,
                        float* Y, int ldy) {
    static_assert(EB % TILE_RB == 0, "a block of examples is whole tiles");
    int j0 = 0;
    for (; j0 + TILE_CB * VW <= out; j0 += TILE_CB * VW)
        for (int e0 = 0; e0 < ne; e0 += TILE_RB) tile<TILE_RB, TILE_CB>(e0, ne, X, ldx, W, bias, in, out, j0, Y, ldy);
    for (; j0 + VW <= out; j0 += VW)
        for (int e0 = 0; e0 < ne; e0 += TILE_RB) tile<TILE_RB, 1>(e0, ne, X, ldx, W, bias, in, out, j0, Y, ldy);
    rows_matmul_tail(ne, X, ldx, W, bias, in, out, j0, Y, ldy);
}

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
    int rows;               // rows per seed of the weight-gradient buffers: its examples' steps that run
    const int* pos;         // [N, Tmax]: the row of example n's step t within its seed's rows; -1 where
                            // the example is past its last step (skipped)
    bool runs(size_t n) const { return pos[n * Tmax + t] >= 0; }
    size_t row(size_t n) const { return (size_t)(n / B) * rows + pos[n * Tmax + t]; }
};

// Per-thread scratch for one block.
template <typename T>
struct Scratch {
    std::vector<T> x[3], y[3], dO, d0, dY, dX, tmp, lstm, V;
    CircuitScratch<T> circuit;
    Scratch(const Net& net, const Circuit& c)
        : tmp((size_t)c.R * c.P), lstm((size_t)6 * net.H), V((size_t)c.K * c.P), circuit(c) {
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

// Runs body(scratch, idx, ne, seed) over this call's examples in blocks of up to EB examples of one
// seed (idx: their indices), each thread over its own contiguous share. An example whose last step
// is behind it (!net.runs(n)) gets idle(n) instead: its later steps weigh nothing in the loss, so they
// need no arithmetic, only outputs that carry its state on.
template <typename T, typename Body, typename Idle>
static void over_blocks(const Net& net, const Circuit& c, int N, int threads, Body&& body, Idle&& idle) {
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        Scratch<T> s(net, c);
        int n0, n1;
        share(N, threads, n0, n1);
        int idx[EB], ne = 0, seed = -1;
        for (int n = n0; n < n1; n++) {
            if (ne && n / net.B != seed) {
                body(s, idx, ne, seed);
                ne = 0;
            }
            if (!net.runs(n)) {
                idle(n);
                continue;
            }
            seed = n / net.B;
            idx[ne++] = n;
            if (ne == EB) {
                body(s, idx, ne, seed);
                ne = 0;
            }
        }
        if (ne) body(s, idx, ne, seed);
    }
}

// Pointers of a forward call, in the order fused.py passes them.
template <typename T>
struct FwdArgs {
    const T *Wf[3], *bf[3];
    const T *regs_in, *mem_in, *h_in, *c_in;
    const int* y;
    const T* mask;
    T *regs_out, *mem_out, *h_out, *c_out, *f_out, *ll_out, *W, *U, *V, *AB, *saved, *ctl_save;
    T* X[3];
    const T* noise;         // [N, O] added to the logits (training's logit noise), or null
};

template <typename T>
static void fused_forward(const Net& net, const Circuit& c, const FwdArgs<T>& a, int N, int renorm, T eps,
                          int threads) {
    const int R = c.R, Q = c.Q, K = c.K, M = c.M, H = net.H, O = net.O;
    over_blocks<T>(net, c, N, threads, [&](Scratch<T>& s, const int* idx, int ne, int seed) {
        const T* Wf[3];
        const T* bf[3];
        for (int l = 0; l < 3; l++) {
            Wf[l] = a.Wf[l] + (size_t)seed * net.in[l] * net.out[l];
            bf[l] = a.bf[l] + (size_t)seed * net.out[l];
        }
        // controller input: P(r = 0) of each register
        for (int e = 0; e < ne; e++)
            for (int r = 0; r < R; r++) s.x[0][(size_t)e * R + r] = a.regs_in[((size_t)idx[e] * R + r) * M];
        rows_matmul(ne, s.x[0].data(), R, Wf[0], bf[0], net.in[0], net.out[0], s.y[0].data(), net.out[0]);
        for (int e = 0; e < ne; e++)         // relu, into the middle layer's input
            for (int j = 0; j < H; j++) s.x[1][(size_t)e * net.in[1] + j] = std::max(s.y[0][(size_t)e * H + j], T(0));
        if (net.kind == 1)
            for (int e = 0; e < ne; e++)
                std::memcpy(&s.x[1][(size_t)e * net.in[1] + H], a.h_in + (size_t)idx[e] * H, sizeof(T) * H);
        rows_matmul(ne, s.x[1].data(), net.in[1], Wf[1], bf[1], net.in[1], net.out[1], s.y[1].data(), net.out[1]);
        for (int e = 0; e < ne; e++) {
            const T* z = &s.y[1][(size_t)e * net.out[1]];
            T* x2 = &s.x[2][(size_t)e * H];
            if (net.kind == 0) {
                for (int j = 0; j < H; j++) x2[j] = std::max(z[j], T(0));
            } else {                          // LSTM cell: z = (i, f, g, o)
                const size_t n = idx[e];
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
                    std::memcpy(a.X[l] + net.row(idx[e]) * net.in[l],
                                &s.x[l][(size_t)e * net.in[l]], sizeof(T) * net.in[l]);
        if (a.noise)
            for (int e = 0; e < ne; e++) {
                T* z = &s.y[2][(size_t)e * O];
                const T* g = a.noise + (size_t)idx[e] * O;
                for (int o = 0; o < O; o++) z[o] += g[o];
            }
        for (int e = 0; e < ne; e++) {
            const size_t n = idx[e];
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
    }, [&](int n) {                           // past its last step: the machine stands still
        std::memcpy(a.regs_out + (size_t)n * R * M, a.regs_in + (size_t)n * R * M, sizeof(T) * R * M);
        std::memcpy(a.mem_out + (size_t)n * M * M, a.mem_in + (size_t)n * M * M, sizeof(T) * M * M);
        if (net.kind == 1) {
            std::memcpy(a.h_out + (size_t)n * H, a.h_in + (size_t)n * H, sizeof(T) * H);
            std::memcpy(a.c_out + (size_t)n * H, a.c_in + (size_t)n * H, sizeof(T) * H);
        }
        a.f_out[n] = 0;
        if (a.ll_out) a.ll_out[n] = 0;
        std::fill(a.W + (size_t)n * Q * 2 * K, a.W + (size_t)(n + 1) * Q * 2 * K, T(0));
        std::fill(a.U + (size_t)n * R * K, a.U + (size_t)(n + 1) * R * K, T(0));
    });
}

template <typename T>
struct BwdArgs {
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
    over_blocks<T>(net, c, N, threads, [&](Scratch<T>& s, const int* idx, int ne, int seed) {
        for (int e = 0; e < ne; e++) {       // the circuit, back to the logits
            const size_t n = idx[e];
            const size_t m = e + 1 < ne ? idx[e + 1] : n + 1;
            if (m < (size_t)N) {               // what the forward saved comes from main memory: ask early
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
            std::memcpy(a.D[2] + net.row(n) * O, dO, sizeof(T) * O);
        }
        const T* Wt[3];
        for (int l = 0; l < 3; l++) Wt[l] = a.Wt[l] + (size_t)seed * net.in[l] * net.out[l];
        // head: d(head input) = dO W^T
        rows_matmul(ne, s.dO.data(), O, Wt[2], (const T*)nullptr, O, H, s.dX.data(), H);
        for (int e = 0; e < ne; e++) {
            const size_t n = idx[e], row = net.row(n);
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
            const size_t n = idx[e], row = net.row(n);
            const T* dx1 = &s.dX[(size_t)e * net.in[1]];
            const T* a1 = a.X[1] + row * net.in[1];
            T* d0 = &s.d0[(size_t)e * H];
            for (int j = 0; j < H; j++) d0[j] = a1[j] > 0 ? dx1[j] : T(0);
            if (net.kind == 1) std::memcpy(a.d_h_in + n * H, dx1 + H, sizeof(T) * H);
            std::memcpy(a.D[0] + row * H, d0, sizeof(T) * H);
        }
        rows_matmul(ne, s.d0.data(), H, Wt[0], (const T*)nullptr, H, R, s.dX.data(), R);
        for (int e = 0; e < ne; e++)
            for (int r = 0; r < R; r++) a.d_regs_in[((size_t)idx[e] * R + r) * M] += s.dX[(size_t)e * R + r];
    }, [&](int n) {                           // past its last step: nothing reaches back through it
        std::fill(a.d_regs_in + (size_t)n * R * M, a.d_regs_in + (size_t)(n + 1) * R * M, T(0));
        std::fill(a.d_mem_in + (size_t)n * M * M, a.d_mem_in + (size_t)(n + 1) * M * M, T(0));
        if (net.kind == 1) {
            std::fill(a.d_h_in + (size_t)n * H, a.d_h_in + (size_t)(n + 1) * H, T(0));
            std::fill(a.d_c_in + (size_t)n * H, a.d_c_in + (size_t)(n + 1) * H, T(0));
        }
    });
}

