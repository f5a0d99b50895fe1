/* Work items shared out over a team of OpenMP threads, for the C kernels.
 *
 * Each thread owns a contiguous share of the items and takes them from its front, in order, so it
 * streams its weights in one sequential run; a thread done with its share then takes items from
 * the back of the others'. Why not OpenMP's static schedule: on a shared machine one core often
 * runs slower for a while, and a static split then leaves the other idle at the end of every
 * product, when a single core reads memory at 55-70% of what two do. Over the 97 products of a
 * decode step, static halves read the weights about 5% slower than this.
 */
#ifndef FIM_SHARES_H
#define FIM_SHARES_H

#include <stdatomic.h>
#include <stdint.h>

/* One thread's share: items [next, end), packed into one word so that the owner (taking from the
 * front) and a helper (taking from the back) agree through a single compare-and-swap. On a cache
 * line of its own, so that owners never contend. */
typedef struct {
    _Alignas(64) _Atomic uint64_t range;
} Share;

static inline uint64_t share_range(uint32_t next, uint32_t end) {
    return (uint64_t)end << 32 | next;
}

/* Items [0, count) into `team` contiguous shares, as even as they go. Call by one thread. */
static inline void share_out(Share *shares, int team, uint32_t count) {
    for (int t = 0; t < team; t++)
        atomic_store_explicit(&shares[t].range,
                              share_range((uint64_t)count * t / team, (uint64_t)count * (t + 1) / team),
                              memory_order_relaxed);
}

/* The item taken from the front (`front`) or back of `share`, or -1 when it is empty. */
static inline long take_from(Share *share, int front) {
    uint64_t range = atomic_load_explicit(&share->range, memory_order_relaxed);
    for (;;) {
        const uint32_t next = (uint32_t)range, end = (uint32_t)(range >> 32);
        if (next >= end) return -1;
        const uint64_t rest = front ? share_range(next + 1, end) : share_range(next, end - 1);
        if (atomic_compare_exchange_weak_explicit(&share->range, &range, rest,
                                                  memory_order_relaxed, memory_order_relaxed))
            return front ? next : end - 1;
    }
}

/* Thread `me`'s next item: its own share's front first, then the back of the others'; -1 when
 * every share is empty. */
static inline long take(Share *shares, int team, int me) {
    long item = take_from(&shares[me], 1);
    for (int other = 1; item < 0 && other < team; other++)
        item = take_from(&shares[(me + other) % team], 0);
    return item;
}

#endif
