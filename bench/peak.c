/* The core's clock and its int8 multiply-add rate per ISA, for bench/prefill_floor.py: register-only
 * loops whose cycles are known (the clock) or whose instructions are independent (the peak). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* 8 dependent one-cycle adds per iteration: 8 n cycles. Register operands: Intel's cores from
 * Golden Cove on execute adds of small immediates at rename, several a cycle (the clock read
 * 14 GHz with them). */
long clock_cycles(long n) {
    long x = 0, one = 1;
    for (long i = 0; i < n; i++)
        __asm__ volatile("add %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\t"
                         "add %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0" : "+r"(x) : "r"(one));
    return x;
}

/* The products' instructions in assembly, so that the compiler adds nothing to the loop. Their
 * inputs are whatever the registers hold: the instructions take as long for any values. */

/* AVX2: vpmaddubsw (32 u8 x s8 products), then vpmaddwd and vpaddd into int32, as the kernels
 * do it: 6 chains x 32 = 192 multiply-adds per iteration. */
long avx2_macs(long n) {
    __asm__ volatile(
        "1:\n\t"
        "vpmaddubsw %%ymm13, %%ymm14, %%ymm6\n\t vpmaddwd %%ymm15, %%ymm6, %%ymm6\n\t vpaddd %%ymm6, %%ymm0, %%ymm0\n\t"
        "vpmaddubsw %%ymm13, %%ymm12, %%ymm7\n\t vpmaddwd %%ymm15, %%ymm7, %%ymm7\n\t vpaddd %%ymm7, %%ymm1, %%ymm1\n\t"
        "vpmaddubsw %%ymm13, %%ymm11, %%ymm8\n\t vpmaddwd %%ymm15, %%ymm8, %%ymm8\n\t vpaddd %%ymm8, %%ymm2, %%ymm2\n\t"
        "vpmaddubsw %%ymm14, %%ymm12, %%ymm9\n\t vpmaddwd %%ymm15, %%ymm9, %%ymm9\n\t vpaddd %%ymm9, %%ymm3, %%ymm3\n\t"
        "vpmaddubsw %%ymm14, %%ymm11, %%ymm10\n\t vpmaddwd %%ymm15, %%ymm10, %%ymm10\n\t vpaddd %%ymm10, %%ymm4, %%ymm4\n\t"
        "vpmaddubsw %%ymm12, %%ymm11, %%ymm6\n\t vpmaddwd %%ymm15, %%ymm6, %%ymm6\n\t vpaddd %%ymm6, %%ymm5, %%ymm5\n\t"
        "dec %0\n\t jnz 1b\n\t vzeroupper"
        : "+r"(n)
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
    return n;
}

/* AVX-512 VNNI: vpdpbusd on 512-bit registers (64 products), 12 independent sums (each waits
 * on its last): 768 multiply-adds per iteration. */
long vnni_macs(long n) {
    __asm__ volatile(
        "1:\n\t"
        "vpdpbusd %%zmm14, %%zmm15, %%zmm0\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm1\n\t"
        "vpdpbusd %%zmm14, %%zmm15, %%zmm2\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm3\n\t"
        "vpdpbusd %%zmm14, %%zmm15, %%zmm4\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm5\n\t"
        "vpdpbusd %%zmm14, %%zmm15, %%zmm6\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm7\n\t"
        "vpdpbusd %%zmm14, %%zmm15, %%zmm8\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm9\n\t"
        "vpdpbusd %%zmm14, %%zmm15, %%zmm10\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm11\n\t"
        "dec %0\n\t jnz 1b\n\t vzeroupper"
        : "+r"(n)
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "xmm14", "xmm15", "cc");
    return n;
}

/* AMX: tdpbusd, a 16 x 64 tile of u8 by a 64 x 16 one of s8 (16,384 multiply-adds), into 4
 * independent sums: 65,536 multiply-adds per iteration. -1 where Linux lends no tiles. */
__attribute__((target("amx-tile,amx-int8"))) long amx_macs(long n) {
#ifdef __linux__
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) return -1;
#else
    return -1;
#endif
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t bytes[16];
        uint8_t rows[16];
    } config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) config.rows[t] = 16, config.bytes[t] = 64;
    __asm__ volatile("" : : "r"(&config) : "memory"); /* GCC drops the stores otherwise */
    _tile_loadconfig(&config);
    for (long i = 0; i < n; i++) {
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
    }
    _tile_release();
    return n;
}
