/* cpu.c - run-time detection of the instruction sets the kernels use (CPU and OS support). */
#include "kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>

/* XCR0: which register states the OS saves on context switches. */
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

typedef struct {
    int avx2;   /* AVX2 + FMA + F16C, with the YMM state enabled by the OS */
    int avx512; /* AVX-512 F/BW/VL/VNNI, with the opmask and ZMM states enabled by the OS */
} cpu_features;

static cpu_features detect(void) {
    cpu_features f = {0, 0};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1,
              f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return f;
    const uint64_t xcr0 = read_xcr0();
    const int ymm_os = (xcr0 & 0x6) == 0x6;    /* SSE + AVX state */
    const int zmm_os = (xcr0 & 0xE6) == 0xE6;  /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1,
              avx512vl = (b >> 31) & 1, avx512vnni = (c >> 11) & 1;
    f.avx2 = ymm_os && avx2 && fma && f16c;
    f.avx512 = f.avx2 && zmm_os && avx512f && avx512bw && avx512vl && avx512vnni;
    return f;
}

int pi_cpu_has_isa(int isa) {
    static int cached = -1; /* bit 0: AVX2, bit 1: AVX-512; idempotent, so a race is harmless */
    int bits = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (bits < 0) {
        const cpu_features f = detect();
        bits = (f.avx2 ? 1 : 0) | (f.avx512 ? 2 : 0);
        __atomic_store_n(&cached, bits, __ATOMIC_RELAXED);
    }
    switch (isa) {
    case PI_ISA_SCALAR: return 1;
    case PI_ISA_AVX2: return bits & 1;
    case PI_ISA_AVX512: return (bits >> 1) & 1;
    default: return 0;
    }
}

#else

int pi_cpu_has_isa(int isa) { return isa == PI_ISA_SCALAR; }

#endif
