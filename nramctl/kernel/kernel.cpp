// The compiled kernel's entry points: one NRAM timestep's circuit (circuit.py's autograd node), or the
// whole timestep with the controller (fused.py), forward and backward, as plain loops over examples.
//
// Same computation as nramctl/circuit.py and machine.py (the definitions; tests/test_reference.py
// checks them against each other and a plain autograd reference). Each example's registers and M x M
// memory fit in cache, so one pass per example replaces a few hundred small tensor operations per
// timestep. Built on first use by nramctl/native.py (with kernel/*.h) and called through ctypes on
// contiguous tensors; with OpenMP the examples are shared out over torch's own threads.
//
// Shapes per example: W [Q, 2, K] gate-input weights, U [R, K] register weights, VT [P, K8] sources
// (registers, then gate outputs) transposed, AB [Q, 2, P] gate inputs, saved [G, M, M] memory as each
// memory gate after the first WRITE saw it; K = R + Q, P and K8 are M and K rounded up to 8.
// Gate codes match native.py's CODES.
#include "fused.h"

// The circuit alone (circuit.py's autograd node): examples shared out over the threads.
template <typename T>
static void forward(const T* arg_logits_, const T* reg_logits_, const T* regs_, const T* mem_in_, T* W_,
                    T* U_, T* V_, T* AB_, T* saved_, T* new_regs_, T* mem_, int N, int R, int Q, int M,
                    int G, const int* codes, const int* arity, const int* values, int renorm,
                    int threads) {
    const Circuit c = make_circuit(R, Q, M, G, codes, arity, values);
    const int K = c.K, P = c.P;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::vector<T> tmp((size_t)R * P), V((size_t)K * P);
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

// The sizes (v) and the gate sequence (the first three pointers of p: codes, arity, values).
static void net_dims(const int* v, void** p, Net& net, Circuit& c, int& N, int& renorm, int& threads) {
    // v: N, S, B, R, Q, M, G, H, O, kind, renorm, threads, Tmax, t, rows
    N = v[0];
    c = make_circuit(v[3], v[4], v[5], v[6], (const int*)p[0], (const int*)p[1], (const int*)p[2]);
    net.S = v[1]; net.B = v[2]; net.H = v[7]; net.O = v[8]; net.kind = v[9];
    renorm = v[10]; threads = v[11]; net.Tmax = v[12]; net.t = v[13]; net.rows = v[14]; net.pos = nullptr;
    const int H = net.H;
    int in[3] = {c.R, net.kind ? 2 * H : H, H}, out[3] = {H, net.kind ? 4 * H : H, net.O};
    for (int l = 0; l < 3; l++) { net.in[l] = in[l]; net.out[l] = out[l]; }
}

template <typename T>
static void step_forward(const int* v, void** p, double eps) {
    Net net; Circuit c; int N, renorm, threads;
    net_dims(v, p, net, c, N, renorm, threads);
    FwdArgs<T> a;
    int k = 3;                               // after the gate sequence
    for (int l = 0; l < 3; l++) { a.Wf[l] = (const T*)p[k++]; a.bf[l] = (const T*)p[k++]; }
    a.regs_in = (const T*)p[k++]; a.mem_in = (const T*)p[k++]; a.h_in = (const T*)p[k++]; a.c_in = (const T*)p[k++];
    a.y = (const int*)p[k++]; a.mask = (const T*)p[k++]; net.pos = (const int*)p[k++];
    a.regs_out = (T*)p[k++]; a.mem_out = (T*)p[k++]; a.h_out = (T*)p[k++]; a.c_out = (T*)p[k++];
    a.f_out = (T*)p[k++]; a.ll_out = (T*)p[k++]; a.W = (T*)p[k++]; a.U = (T*)p[k++]; a.V = (T*)p[k++];
    a.AB = (T*)p[k++]; a.saved = (T*)p[k++]; a.ctl_save = (T*)p[k++];
    for (int l = 0; l < 3; l++) a.X[l] = (T*)p[k++];
    a.noise = (const T*)p[k++];
    fused_forward<T>(net, c, a, N, renorm, (T)eps, threads);
}

template <typename T>
static void step_backward(const int* v, void** p, double clipc, double eps) {
    Net net; Circuit c; int N, renorm, threads;
    net_dims(v, p, net, c, N, renorm, threads);
    BwdArgs<T> a;
    int k = 3;                               // after the gate sequence
    for (int l = 0; l < 3; l++) a.Wt[l] = (const T*)p[k++];
    a.W = (const T*)p[k++]; a.U = (const T*)p[k++]; a.V = (const T*)p[k++]; a.AB = (const T*)p[k++];
    a.saved = (const T*)p[k++]; a.mem_in = (const T*)p[k++]; a.mem_out = (const T*)p[k++]; a.f = (const T*)p[k++]; a.ctl_save = (const T*)p[k++];
    a.y = (const int*)p[k++]; a.mask = (const T*)p[k++]; net.pos = (const int*)p[k++];
    for (int l = 0; l < 3; l++) a.X[l] = (const T*)p[k++];
    a.d_regs_out = (const T*)p[k++]; a.d_mem_out = (const T*)p[k++]; a.d_h_out = (const T*)p[k++];
    a.d_c_out = (const T*)p[k++]; a.d_f = (const T*)p[k++]; a.d_ll = (const T*)p[k++];
    a.d_W = (const T*)p[k++]; a.d_U = (const T*)p[k++];
    a.d_regs_in = (T*)p[k++]; a.d_mem_in = (T*)p[k++]; a.d_h_in = (T*)p[k++]; a.d_c_in = (T*)p[k++];
    for (int l = 0; l < 3; l++) a.D[l] = (T*)p[k++];
    fused_backward<T>(net, c, a, N, (T)clipc, (T)eps, threads);
}

// A span of timesteps in one call: row i of `table` ([n, slots] pointers) holds timestep t0 + i's
// pointers in the order above; forward from the first timestep, backward from the last (v[13] = t0).
template <typename T>
static void span_forward(int* v, void** table, int slots, int n, double eps) {
    const int t0 = v[13];
    for (int i = 0; i < n; i++) {
        v[13] = t0 + i;
        step_forward<T>(v, table + (size_t)i * slots, eps);
    }
}

template <typename T>
static void span_backward(int* v, void** table, int slots, int n, double clipc, double eps) {
    const int t0 = v[13];
    for (int i = n - 1; i >= 0; i--) {
        v[13] = t0 + i;
        step_backward<T>(v, table + (size_t)i * slots, clipc, eps);
    }
}

// Adam's update of one parameter tensor in torch.optim.Adam's arithmetic, in two passes around the
// square root of the second moment, which stays torch's (MKL's, not correctly rounded: a square root
// here would change the last bit of 14% of the denominators): the moments, then the step. Each of
// torch's tensor operations rounds to T, its lerp (the first moment) and addcmul (the second) fuse a
// multiply and an add as ATen's kernels do, and nothing else may be fused (fp-contract=off), so the
// parameters come out bit for bit as torch's (tests/test_train.py).
template <typename T>
__attribute__((optimize("fp-contract=off")))
static void adam_moments(const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, long n, double b1, double b2, int threads) {
    const T w = T(1 - b1), decay = T(b2), mix = T(1 - b2);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (long i = 0; i < n; i++) {
        m[i] = std::fma(w, g[i] - m[i], m[i]);
        v[i] = std::fma(mix * g[i], g[i], v[i] * decay);
    }
}

// p -= lr_t m / (sqrt(v) / bias2 + eps), `root` holding sqrt(v); `rate` (one per block of `per` entries:
// per-seed learning rates) replaces the scalar step -lr / (1 - b1^t), and `bias2s` (per block too, with
// `rate`: seeds whose step counts differ) the scalar bias2.
template <typename T>
__attribute__((optimize("fp-contract=off")))
static void adam_apply(T* __restrict__ p, const T* __restrict__ m, const T* __restrict__ root, long n, long per, const T* rate, double step,
                       double bias2, const T* bias2s, double eps, int threads) {
    const T e = T(eps), s = T(step);
    const long blocks = (n + per - 1) / per;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (long b = 0; b < blocks; b++) {
        const long end = std::min(n, (b + 1) * per);
        const T c = bias2s ? bias2s[b] : T(bias2);
        if (rate) {
            const T r = rate[b];
            for (long i = b * per; i < end; i++) p[i] = p[i] - (m[i] / (root[i] / c + e)) * r;
        } else {
            for (long i = b * per; i < end; i++) p[i] = p[i] + (s * m[i]) / (root[i] / c + e);
        }
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
                                   const T* mem_in, const T* d_regs, const T* d_mem_out, const T* d_W, const T* d_U,    \
                                   double c, T* d_arg_logits, T* d_reg_logits, T* d_regs_in, T* d_mem, \
                                   int N, int R, int Q, int M, int G, const int* codes,                \
                                   const int* arity, int threads) {                                    \
        backward<T>(W, U, V, AB, saved, mem_in, d_regs, d_mem_out, d_W, d_U, (T)c, d_arg_logits,               \
                    d_reg_logits, d_regs_in, d_mem, N, R, Q, M, G, codes, arity, threads);             \
    }                                                                                                  \
    void span_forward_##suffix(int* ints, void** table, int slots, int n, double eps) {                \
        span_forward<T>(ints, table, slots, n, eps);                                                   \
    }                                                                                                  \
    void span_backward_##suffix(int* ints, void** table, int slots, int n, double clip, double eps) {  \
        span_backward<T>(ints, table, slots, n, clip, eps);                                            \
    }                                                                                                  \
    void adam_moments_##suffix(const T* g, T* m, T* v, long n, double b1, double b2, int threads) {     \
        adam_moments<T>(g, m, v, n, b1, b2, threads);                                                 \
    }                                                                                                  \
    void adam_apply_##suffix(T* p, const T* m, const T* root, long n, long per, const T* rate,          \
                             double step, double bias2, const T* bias2s, double eps, int threads) {   \
        adam_apply<T>(p, m, root, n, per, rate, step, bias2, bias2s, eps, threads);                    \
    }
NRAM_EXPORT(float, f32)
NRAM_EXPORT(double, f64)
}
