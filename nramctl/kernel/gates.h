// The gates of a circuit on one example: each gate's fuzzy form and its backward, on M cells.
// Same arithmetic as nramctl/gates.py (the definition); tests/test_reference.py checks the kernel.
#pragma once
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
// about 2e-7), written so that the softmax and LSTM loops vectorize (GCC does so only with
// -fno-trapping-math, which native.py passes); libm's expf, called per element, took
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

