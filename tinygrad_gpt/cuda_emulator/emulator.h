// A CPU runtime for the CUDA C of tinygrad_gpt/kernels/cuda, for the tests on machines without a GPU.
//
// tinygrad_gpt/cuda_emulator/__init__.py compiles a kernel file's PREAMBLE + SOURCE with g++ after this
// header, so the kernels' own text runs: every thread of a block is a fiber with its
// own stack and registers (the kernel's local arrays), and the fibers of a block run one at a
// time on one OS thread, each until it reaches a __syncthreads(), a warp shuffle or its end.
//
//   __syncthreads()      released when every thread of the block has reached it. A thread that
//                        has returned while others wait, or threads waiting at different kinds of
//                        barrier with nothing left to run, is an error (divergent barrier), not a
//                        hang.
//   __shfl_xor_sync etc. released when all 32 lanes of the warp have reached a shuffle; each lane
//                        then reads its source lane's value. Only the full mask is taken, and a
//                        lane that has returned, or a warp with fewer than 32 threads, is an error.
//   __shared__           one buffer per block (the Python side rewrites the declarations into
//                        EMU_SHARED), filled with 0xFF bytes at the start of each block: reading
//                        shared memory nobody wrote gives NaN. More than 48 KiB of it per block is
//                        an error, as it is for static shared memory on the GPU.
//   atomicAdd            a plain read-add-write (one OS thread: nothing interleaves).
//   direct mode          a launch first calls the threads one after another on one stack, no
//                        fibers; the first barrier or shuffle reached aborts that run (longjmp)
//                        and the launch is run again, from the same inputs, with fibers.
//   order                blocks run one after another, and the fibers of a block are started and
//                        resumed in thread order; or both in reverse order. A kernel whose result
//                        depends on that has a race: between barriers (a missing __syncthreads)
//                        or between blocks (one block reading what another writes), which the
//                        Python side catches by running both orders and comparing.
//
// What this cannot see: timing, coalescing, bank conflicts, register pressure, and races that
// happen to give the same answer in both orders. Errors inside a fiber are recorded, the launch
// stops, and the Python side raises them.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <csetjmp>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <memory>
#include <vector>
#if defined(__x86_64__) && defined(__ELF__) && !defined(EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// subtle: everything in an anonymous namespace (internal linkage). Inline variables, and static
// locals of inline functions, are STB_GNU_UNIQUE symbols that the dynamic loader shares across
// every library of the process even under RTLD_LOCAL: without this, each kernel library ctypes
// loads would use the runtime object of the first one loaded (seen: a crash when two libraries
// with different Context layouts were loaded together).
namespace emu {
namespace {

enum State { RUNNABLE, AT_BARRIER, AT_SHUFFLE, DONE };

// ------------------------------------------------------------------------------------------------
// fibers. x86-64: a 20-instruction switch of the callee-saved registers and the stack pointer (no
// system call: glibc's swapcontext saves the signal mask with one, ~1 us a switch, and a warp
// reduction is 10 switches a lane). Elsewhere, or with -DEMU_UCONTEXT: ucontext.
// ------------------------------------------------------------------------------------------------
#if defined(EMU_ASM_SWITCH)
extern "C" void emu_switch_context(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl emu_switch_context
    .hidden emu_switch_context
    .type emu_switch_context, @function
emu_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_context, .-emu_switch_context
)");

struct Context {
    void* sp = nullptr;
};

inline void switch_to(Context& from, Context& to) { emu_switch_context(&from.sp, to.sp); }

// a context that starts fn on the stack [base, base + bytes): the frame emu_switch_context pops
inline void make_context(Context& c, char* base, size_t bytes, void (*fn)()) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(base) + bytes) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top - 72);   // fn is entered with rsp = 8 mod 16
    sp[0] = 0x1F80ull | (0x037Full << 32);                   // mxcsr, x87 control word: defaults
    for (int i = 1; i <= 6; i++) sp[i] = 0;                  // r15 r14 r13 r12 rbx rbp
    sp[7] = reinterpret_cast<uint64_t>(fn);                  // ret goes to fn
    sp[8] = 0;                                               // fn never returns
    c.sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};

inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

inline void make_context(Context& c, char* base, size_t bytes, void (*fn)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = base;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fn, 0);
}
#endif

struct Thread {
    dim3 idx;
    int linear = 0;
    State state = RUNNABLE;
    Context ctx;
    unsigned long long value = 0, result = 0;  // shuffle: this lane's value, and what it reads
    int src = 0;                               // shuffle: the lane to read
    unsigned int mask = 0;
    const char* op = "";                       // which shuffle (for error messages)
};

constexpr size_t STACK_BYTES = 64 * 1024;
constexpr size_t SHARED_LIMIT = 48 * 1024;

struct Runtime {
    dim3 grid, block, bidx;
    std::vector<Thread> threads;
    std::vector<std::unique_ptr<char[]>> stacks;
    Thread* cur = nullptr;
    Context sched;
    std::unordered_map<const void*, std::vector<unsigned char>> shared;
    size_t shared_bytes = 0;
    std::string error;
    std::function<void()> body;
    bool direct = false;     // threads called one after another on this stack, no fibers
    std::jmp_buf escape;     // direct mode: where a barrier, a shuffle or an error jumps back to
};

// setjmp's return values in direct mode
constexpr int NEEDS_FIBERS = 2, DIRECT_ERROR = 3;

Runtime the_runtime;  // one per compiled kernel library; a plain global (no guard on each use)

inline Runtime& rt() { return the_runtime; }

inline std::string where() {
    Runtime& r = rt();
    char buf[160];
    std::snprintf(buf, sizeof buf, "block (%u, %u, %u)", r.bidx.x, r.bidx.y, r.bidx.z);
    return buf;
}

// record an error and leave the fiber for good (the launch stops, the stack is abandoned)
inline void fail(const std::string& what) {
    Runtime& r = rt();
    if (r.error.empty()) r.error = what;
    if (r.direct) std::longjmp(r.escape, DIRECT_ERROR);
    if (r.cur) {
        r.cur->state = DONE;
        switch_to(r.cur->ctx, r.sched);
    }
}

inline void yield(State s) {
    Runtime& r = rt();
    if (r.direct) std::longjmp(r.escape, NEEDS_FIBERS);         // the launch reruns with fibers
    r.cur->state = s;
    switch_to(r.cur->ctx, r.sched);
}

// a fiber's first and last frame: run the kernel, then hand back to the scheduler for good
inline void entry() {
    Runtime& r = rt();
    r.body();
    r.cur->state = DONE;
    switch_to(r.cur->ctx, r.sched);
}

template <typename A>
A* shared_array(const void* key) {
    Runtime& r = rt();
    auto it = r.shared.find(key);
    if (it == r.shared.end()) {
        r.shared_bytes += sizeof(A);
        if (r.shared_bytes > SHARED_LIMIT)
            fail("the kernel declares " + std::to_string(r.shared_bytes) +
                 " bytes of __shared__ memory, above the 48 KiB static limit");
        it = r.shared.emplace(key, std::vector<unsigned char>(sizeof(A), 0xFF)).first;
    }
    return reinterpret_cast<A*>(it->second.data());
}

template <typename T>
T shuffle(const char* op, unsigned int mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value over 8 bytes");
    Runtime& r = rt();
    Thread* t = r.cur;
    t->op = op;
    t->mask = mask;
    t->src = src;
    t->value = 0;
    std::memcpy(&t->value, &v, sizeof(T));
    yield(AT_SHUFFLE);
    T out;
    std::memcpy(&out, &t->result, sizeof(T));
    return out;
}

inline int lane() { return rt().cur->linear & 31; }

// release the warps whose 32 lanes all wait at a shuffle; false and an error for a broken warp
inline bool release_warps(bool& released) {
    Runtime& r = rt();
    const int n = (int)r.threads.size();
    for (int w0 = 0; w0 < n; w0 += 32) {
        int waiting = 0, done = 0;
        const char* op = "";
        const int w1 = std::min(n, w0 + 32);
        for (int i = w0; i < w1; i++) {
            waiting += r.threads[i].state == AT_SHUFFLE;
            done += r.threads[i].state == DONE;
            if (r.threads[i].state == AT_SHUFFLE) op = r.threads[i].op;
        }
        if (waiting == 0) continue;
        if (w1 - w0 < 32) {
            r.error = std::string(op) + " with the full mask in a warp of " + std::to_string(w1 - w0) +
                      " threads (block size not a multiple of 32), " + where();
            return false;
        }
        if (waiting + done == 32 && done > 0) {
            r.error = std::string(op) + " with the full mask after " + std::to_string(done) +
                      " lanes of warp " + std::to_string(w0 / 32) + " returned, " + where();
            return false;
        }
        if (waiting < 32) continue;  // the others are still running or at a __syncthreads
        for (int i = w0; i < w1; i++) {
            Thread& t = r.threads[i];
            if (t.mask != 0xffffffffu) {
                r.error = std::string(t.op) + " with mask " + std::to_string(t.mask) +
                          ": the emulator takes the full mask only, " + where();
                return false;
            }
            const int s = t.src;
            t.result = (s >= 0 && s < 32) ? r.threads[w0 + s].value : t.value;
        }
        for (int i = w0; i < w1; i++) r.threads[i].state = RUNNABLE;
        released = true;
    }
    return true;
}

// run one block to its end; false on an error (r.error says what)
// make block k of the launch's order (reversed or not) the current one, with fresh shared memory
inline void start_block(unsigned long long k, bool reverse) {
    Runtime& r = rt();
    const unsigned long long blocks = (unsigned long long)r.grid.x * r.grid.y * r.grid.z;
    const unsigned long long b = reverse ? blocks - 1 - k : k;
    r.bidx = dim3((unsigned int)(b % r.grid.x), (unsigned int)((b / r.grid.x) % r.grid.y),
                  (unsigned int)(b / ((unsigned long long)r.grid.x * r.grid.y)));
    r.shared.clear();
    r.shared_bytes = 0;
}

inline bool run_block(bool reverse) {
    Runtime& r = rt();
    const int n = (int)r.threads.size();
    while ((int)r.stacks.size() < n) r.stacks.emplace_back(new char[STACK_BYTES]);
    for (int i = 0; i < n; i++) {
        Thread& t = r.threads[i];
        t.state = RUNNABLE;
        make_context(t.ctx, r.stacks[i].get(), STACK_BYTES, entry);
    }
    while (true) {
        bool ran = false;
        for (int k = 0; k < n; k++) {
            Thread& t = r.threads[reverse ? n - 1 - k : k];
            if (t.state != RUNNABLE) continue;
            r.cur = &t;
            switch_to(r.sched, t.ctx);
            r.cur = nullptr;
            ran = true;
            if (!r.error.empty()) return false;
        }
        if (ran) continue;
        int at_barrier = 0, at_shuffle = 0, done = 0;
        for (const Thread& t : r.threads) {
            at_barrier += t.state == AT_BARRIER;
            at_shuffle += t.state == AT_SHUFFLE;
            done += t.state == DONE;
        }
        if (done == n) return true;
        bool released = false;
        if (at_shuffle && !release_warps(released)) return false;
        if (released) continue;
        if (at_barrier == n) {
            for (Thread& t : r.threads) t.state = RUNNABLE;
            continue;
        }
        r.error = "__syncthreads() reached by " + std::to_string(at_barrier) + " of " + std::to_string(n) +
                  " threads (" + std::to_string(done) + " returned, " + std::to_string(at_shuffle) +
                  " at a warp shuffle): a barrier in divergent code, " + where();
        return false;
    }
}

// direct mode: every thread of every block called in turn on this stack, for kernels that never
// reach a barrier or a shuffle (elementwise, grid-stride): ~50x faster than a fiber per thread.
// The first barrier or shuffle any thread reaches jumps back here and the launch returns
// NEEDS_FIBERS; the caller restores the arguments and runs it again with fibers.
inline int run_direct(bool reverse) {
    Runtime& r = rt();
    const int n = (int)r.threads.size();
    const unsigned long long blocks = (unsigned long long)r.grid.x * r.grid.y * r.grid.z;
    r.direct = true;
    const int jumped = setjmp(r.escape);
    if (jumped != 0) {
        r.direct = false;
        r.cur = nullptr;
        return jumped;
    }
    for (unsigned long long k = 0; k < blocks; k++) {
        start_block(k, reverse);
        for (int j = 0; j < n; j++) {
            r.cur = &r.threads[reverse ? n - 1 - j : j];
            r.body();
        }
    }
    r.direct = false;
    r.cur = nullptr;
    return 0;
}

template <typename F>
int launch(F body, const unsigned int* dims, int mode, char* err, int errlen) {
    const int reverse = mode & 1, direct = mode & 2;
    Runtime& r = rt();
    r.grid = dim3(dims[0], dims[1], dims[2]);
    r.block = dim3(dims[3], dims[4], dims[5]);
    r.error.clear();
    r.body = body;
    const int n = (int)(r.block.x * r.block.y * r.block.z);
    r.threads.assign(n, Thread());
    for (int i = 0; i < n; i++) {
        Thread& t = r.threads[i];
        t.linear = i;
        t.idx = dim3(i % r.block.x, (i / r.block.x) % r.block.y, i / (r.block.x * r.block.y));
    }
    if (direct) {
        const int rc = run_direct(reverse != 0);
        r.body = nullptr;
        if (rc == DIRECT_ERROR) {
            std::snprintf(err, errlen, "%s", r.error.c_str());
            return 1;
        }
        return rc;                                             // 0, or NEEDS_FIBERS
    }
    bool ok = true;
    const unsigned long long blocks = (unsigned long long)r.grid.x * r.grid.y * r.grid.z;
    for (unsigned long long k = 0; ok && k < blocks; k++) {
        start_block(k, reverse != 0);                          // reverse: blocks too
        ok = run_block(reverse != 0);
    }
    r.body = nullptr;
    if (!ok) {
        std::snprintf(err, errlen, "%s", r.error.c_str());
        return 1;
    }
    return 0;
}

// the kernel called with args[i] pointing at the i-th argument's bytes (as cuLaunchKernel takes them)
template <typename... A, size_t... I>
void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename... A>
int launch_kernel(void (*f)(A...), const unsigned int* dims, void** args, int mode, char* err, int errlen) {
    return launch([f, args] { call(f, args, std::index_sequence_for<A...>{}); }, dims, mode, err, errlen);
}

// one word per parameter: p (pointer) or s (scalar), then f / i / u (float, signed, unsigned), bytes
template <typename X>
std::string describe() {
    using D = std::remove_cv_t<X>;
    if constexpr (std::is_pointer_v<D>) {
        using E = std::remove_cv_t<std::remove_pointer_t<D>>;
        return "p" + describe<E>().substr(1);
    } else {
        const char kind = std::is_floating_point_v<D> ? 'f' : std::is_signed_v<D> ? 'i' : 'u';
        return std::string("s") + kind + std::to_string(sizeof(D));
    }
}

template <typename... A>
std::string signature(void (*)(A...)) {
    std::string s;
    ((s += describe<A>() + " "), ...);
    return s;
}

}  // namespace
}  // namespace emu

// ------------------------------------------------------------------------------------------------
// the CUDA C names the kernels use
// ------------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define EMU_SHARED(TYPE, NAME, DIMS) \
    static char NAME##_emu_key;      \
    auto& NAME = *emu::shared_array<TYPE DIMS>(&NAME##_emu_key)
#define threadIdx (emu::rt().cur->idx)
#define blockIdx (emu::rt().bidx)
#define blockDim (emu::rt().block)
#define gridDim (emu::rt().grid)

inline void __syncthreads() { emu::yield(emu::AT_BARRIER); }

template <typename T>
T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
    const int l = emu::lane();
    const int s = l ^ lane_mask;
    return emu::shuffle("__shfl_xor_sync", mask, v, (s / width == l / width) ? s : l);
}
template <typename T>
T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    const int l = emu::lane();
    const int s = l + (int)delta;
    return emu::shuffle("__shfl_down_sync", mask, v, (s / width == l / width) ? s : l);
}
template <typename T>
T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    const int l = emu::lane();
    const int s = l - (int)delta;
    return emu::shuffle("__shfl_up_sync", mask, v, (s >= 0 && s / width == l / width) ? s : l);
}
template <typename T>
T __shfl_sync(unsigned int mask, T v, int src, int width = 32) {
    const int l = emu::lane();
    return emu::shuffle("__shfl_sync", mask, v, (l / width) * width + (src % width));
}
inline void __syncwarp(unsigned int mask = 0xffffffffu) { emu::shuffle("__syncwarp", mask, 0, 0); }

template <typename T>
T atomicAdd(T* address, T v) {
    const T old = *address;
    *address = old + v;
    return old;
}
template <typename T>
T __ldg(const T* p) { return *p; }

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }

// CUDA's min / max take mixed integer types; std::min does not
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
