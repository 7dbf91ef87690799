/* Kernel launches of the host build: blocks one after another, the threads of a block
 * as cooperative fibers on stacks that are mapped once and reused. A fiber runs until
 * it reaches __syncthreads(), a warp intrinsic or its end; the scheduler then resumes
 * the next runnable one, sweeping the block forwards or backwards (alternating with
 * every launch and block), so code that reads shared data before the barrier that
 * orders it gets a wrong answer in one order or the other. A block whose threads wait
 * on each other forever is reported as a failed launch. */
#include "runtime/simt/internal.h"

#include <sanitizer/common_interface_defs.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define TG_SIMT_ASAN 1
#else
#define TG_SIMT_ASAN 0
#endif

namespace tg_simt {

thread_info *self;
block_info block;

namespace {

/* ---- context switches ---- */
#if defined(__x86_64__)
/* Saves the callee-saved registers on the current stack, stores its pointer in *save
 * and continues on the stack next (saved the same way, or prepared by make_context). */
extern "C" void tg_simt_swap(void **save, void *next);
__asm__(".text\n"
        ".globl tg_simt_swap\n"
        ".hidden tg_simt_swap\n"
        ".type tg_simt_swap, @function\n"
        "tg_simt_swap:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size tg_simt_swap, .-tg_simt_swap\n");

struct context {
  void *sp;
};
void make_context(context *c, char *stack, size_t bytes, void (*entry)()) {
  /* entry starts as if called: its return address slot (never used) sits on a
   * 16-byte boundary, below it the address tg_simt_swap returns to and six zeroed
   * registers. */
  void **sp = reinterpret_cast<void **>(stack + bytes);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void *>(entry);
  for (int i = 0; i < 6; i++)
    *--sp = nullptr;
  c->sp = sp;
}
void swap_context(context *from, context *to) { tg_simt_swap(&from->sp, to->sp); }
#else
struct context {
  ucontext_t uc;
};
void make_context(context *c, char *stack, size_t bytes, void (*entry)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = bytes;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}
void swap_context(context *from, context *to) { swapcontext(&from->uc, &to->uc); }
#endif

enum state : unsigned char { RUNNABLE, AT_BLOCK, AT_WARP, DONE };

struct fiber {
  thread_info info;
  context ctx;
  char *stack; /* taken from the free stacks when the thread starts */
  state st;
  /* a pending warp rendezvous */
  unsigned mask;
  uint64_t value;
  int src, pred;
  warp_vote out;
  void *asan_fake_stack;
};

/* One launch at a time (the big lock): the scheduler is a singleton. */
struct scheduler {
  std::vector<fiber> fibers;
  char *stacks = nullptr;
  size_t stack_bytes = 0, stack_stride = 0, stacks_mapped = 0;
  /* Stacks not in use, last freed on top: threads that end without waiting run on
   * the same few stacks, which stay in cache. */
  std::vector<char *> free_stacks;
  unsigned n = 0, live = 0, at_block = 0, block_true = 0;
  /* per warp: lanes waiting in a rendezvous, lanes that ended */
  unsigned waiting[32] = {}, ended[32] = {};
  block_vote block_out{};
  fiber *cur = nullptr;
  context home;
  void (*run)(void *) = nullptr;
  void *args = nullptr;
  unsigned long long launches = 0;
  /* the launching thread's stack, for ASan's fiber switches */
  const void *home_bottom = nullptr;
  size_t home_size = 0;
  void *home_fake_stack = nullptr;
};
scheduler S;

size_t stack_size() {
  static const size_t bytes = [] {
    size_t def = TG_SIMT_ASAN ? 256 * 1024 : 64 * 1024;
    const char *s = getenv("TG_SIMT_STACK_BYTES");
    char *end = nullptr;
    unsigned long long v = s ? strtoull(s, &end, 10) : 0;
    if (s && (*end || v < 16384)) {
      fprintf(stderr, "tg_simt: ignoring TG_SIMT_STACK_BYTES=%s (want >= 16384)\n", s);
      v = 0;
    }
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t b = v ? static_cast<size_t>(v) : def;
    return (b + page - 1) / page * page;
  }();
  return bytes;
}

/* Stacks for n threads, each above a PROT_NONE guard page so an overflow faults. */
bool ensure_stacks(unsigned n) {
  if (S.stacks_mapped >= n)
    return true;
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t want = n < 32 ? 32 : n;
  S.stack_bytes = stack_size();
  S.stack_stride = S.stack_bytes + page;
  void *p = mmap(nullptr, want * S.stack_stride, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED)
    return false;
  if (S.stacks)
    munmap(S.stacks, S.stacks_mapped * S.stack_stride);
  S.stacks = static_cast<char *>(p);
  S.stacks_mapped = want;
  for (size_t i = 0; i < want; i++)
    mprotect(S.stacks + i * S.stack_stride, page, PROT_NONE);
  S.fibers.resize(want);
  S.free_stacks.clear();
  for (size_t i = want; i-- > 0;)
    S.free_stacks.push_back(S.stacks + i * S.stack_stride + page);
  return true;
}

/* ---- switches, told to ASan so it tracks which stack is live ---- */
void enter(fiber *f) {
  S.cur = f;
  self = &f->info;
#if TG_SIMT_ASAN
  __sanitizer_start_switch_fiber(&S.home_fake_stack, f->stack, S.stack_bytes);
#endif
  swap_context(&S.home, &f->ctx);
#if TG_SIMT_ASAN
  __sanitizer_finish_switch_fiber(S.home_fake_stack, nullptr, nullptr);
#endif
}

/* Back to the scheduler; returns when the scheduler resumes f (never if it ended). */
void leave(fiber *f, bool ended) {
#if TG_SIMT_ASAN
  __sanitizer_start_switch_fiber(ended ? nullptr : &f->asan_fake_stack, S.home_bottom,
                                 S.home_size);
#else
  (void)ended;
#endif
  swap_context(&f->ctx, &S.home);
#if TG_SIMT_ASAN
  __sanitizer_finish_switch_fiber(f->asan_fake_stack, &S.home_bottom, &S.home_size);
#endif
}

unsigned warp_lanes(unsigned warp) {
  unsigned left = S.n - warp * 32;
  return left >= 32 ? 0xffffffffu : (1u << left) - 1u;
}

/* Completes the rendezvous named by mask in warp w if every live lane it names waits
 * in it; the members then read each other's values. */
bool complete_warp(unsigned w, unsigned mask) {
  unsigned members = mask & warp_lanes(w) & ~S.ended[w], ballot = 0;
  if ((S.waiting[w] & members) != members) /* the usual case: not everyone is here */
    return false;
  fiber *lanes = &S.fibers[w * 32];
  for (unsigned m = members; m; m &= m - 1) {
    const fiber &f = lanes[__builtin_ctz(m)];
    if (f.mask != mask) /* waiting in another rendezvous */
      return false;
    if (f.pred)
      ballot |= m & -m;
  }
  for (unsigned m = members; m; m &= m - 1) {
    fiber &f = lanes[__builtin_ctz(m)];
    unsigned src = static_cast<unsigned>(f.src);
    f.out.value = src < 32 && (members >> src & 1u) ? lanes[src].value : ~0ull;
    f.out.ballot = ballot;
    f.out.members = members;
    f.st = RUNNABLE;
  }
  S.waiting[w] &= ~members;
  return true;
}

void release_block() {
  S.block_out = block_vote{static_cast<int>(S.block_true), static_cast<int>(S.at_block)};
  S.at_block = S.block_true = 0;
  for (unsigned i = 0; i < S.n; i++)
    if (S.fibers[i].st == AT_BLOCK)
      S.fibers[i].st = RUNNABLE;
}

/* A thread's end can complete the barrier or rendezvous the others wait in. */
void thread_ended(fiber *f) {
  f->st = DONE;
  S.live--;
  if (S.at_block && S.at_block == S.live)
    release_block();
  unsigned w = static_cast<unsigned>(f - S.fibers.data()) / 32, lane = f->info.lane;
  S.ended[w] |= 1u << lane;
  for (unsigned m = S.waiting[w]; m; m &= m - 1) {
    const fiber &g = S.fibers[w * 32 + __builtin_ctz(m)];
    if (g.mask >> lane & 1u)
      complete_warp(w, g.mask);
  }
}

void run_thread() { S.run(S.args); }

[[noreturn]] void fiber_main() {
#if TG_SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &S.home_bottom, &S.home_size);
#endif
  fiber *f = S.cur;
  run_thread();
  thread_ended(f);
  leave(f, true);
  __builtin_unreachable();
}

/* Runs one block; false when its threads deadlock. */
bool run_block(bool backwards) {
  dim3 d = block.dim;
  for (unsigned i = 0; i < S.n; i++) {
    fiber &f = S.fibers[i];
    f.info.idx = uint3{i % d.x, i / d.x % d.y, i / (d.x * d.y)};
    f.info.lane = i % 32;
    f.st = RUNNABLE;
    f.stack = nullptr;
    f.asan_fake_stack = nullptr;
  }
  S.live = S.n;
  S.at_block = S.block_true = 0;
  for (unsigned w = 0; w < 32; w++)
    S.waiting[w] = S.ended[w] = 0;
  while (S.live) {
    bool ran = false;
    for (unsigned k = 0; k < S.n; k++) {
      fiber *f = &S.fibers[backwards ? S.n - 1 - k : k];
      if (f->st != RUNNABLE)
        continue;
      if (!f->stack) {
        f->stack = S.free_stacks.back();
        S.free_stacks.pop_back();
        make_context(&f->ctx, f->stack, S.stack_bytes, fiber_main);
      }
      ran = true;
      enter(f);
      if (f->st == DONE) {
        S.free_stacks.push_back(f->stack);
        f->stack = nullptr;
      }
    }
    if (!ran)
      return false;
  }
  return true;
}

void report_deadlock(const char *name) {
  unsigned at_block = 0, at_warp = 0;
  for (unsigned i = 0; i < S.n; i++) {
    at_block += S.fibers[i].st == AT_BLOCK;
    at_warp += S.fibers[i].st == AT_WARP;
  }
  fprintf(stderr,
          "tg_simt: kernel %s deadlocked in block (%u, %u, %u): %u of its %u threads "
          "wait in __syncthreads() and %u in warp intrinsics for threads that never "
          "arrive (divergent barrier or mask)\n",
          name, block.idx.x, block.idx.y, block.idx.z, at_block, S.n, at_warp);
#if TG_SIMT_ASAN
  /* The abandoned fibers' frames stay poisoned: clear them before the stacks serve
   * the next launch. */
  for (unsigned i = 0; i < S.n; i++)
    if (S.fibers[i].stack)
      ASAN_UNPOISON_MEMORY_REGION(S.fibers[i].stack, S.stack_bytes);
#endif
  for (unsigned i = 0; i < S.n; i++)
    if (S.fibers[i].stack) {
      S.free_stacks.push_back(S.fibers[i].stack);
      S.fibers[i].stack = nullptr;
    }
}

} /* namespace */

block_vote sync_block(int pred) {
  fiber *f = S.cur;
  S.at_block++;
  S.block_true += pred != 0;
  f->st = AT_BLOCK;
  if (S.at_block == S.live)
    release_block();
  else
    leave(f, false);
  return S.block_out;
}

warp_vote sync_warp(unsigned mask, uint64_t value, int src, int pred) {
  fiber *f = S.cur;
  f->mask = mask | 1u << f->info.lane;
  f->value = value;
  f->src = src;
  f->pred = pred;
  f->st = AT_WARP;
  unsigned w = static_cast<unsigned>(f - S.fibers.data()) / 32;
  S.waiting[w] |= 1u << f->info.lane;
  if (!complete_warp(w, f->mask))
    leave(f, false);
  return f->out;
}

unsigned active_mask() {
  unsigned w = static_cast<unsigned>(S.cur - S.fibers.data()) / 32, m = 0;
  for (unsigned l = 0; l < 32 && w * 32 + l < S.n; l++)
    if (S.fibers[w * 32 + l].st != DONE)
      m |= 1u << l;
  return m;
}

cudaError_t launch(const void *kernel, const char *name, dim3 grid, dim3 blk, size_t smem,
                   cudaStream_t stream, void (*run)(void *), void *args,
                   const void *params, size_t params_bytes) {
  auto lock = hold();
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  if (!valid_stream(stream))
    return fail(cudaErrorInvalidResourceHandle);
  unsigned long long threads = 1ull * blk.x * blk.y * blk.z;
  if (!threads || !grid.x || !grid.y || !grid.z || blk.x > 1024 || blk.y > 1024 ||
      blk.z > 64 || threads > static_cast<unsigned long long>(kMaxThreads) ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return fail(cudaErrorInvalidConfiguration);
  if (smem > max_dynamic_shared(kernel))
    return fail(cudaErrorInvalidValue);
  if (!ensure_stacks(static_cast<unsigned>(threads)))
    return fail(cudaErrorLaunchOutOfResources);

  void *dynamic = nullptr; /* its own heap block, so ASan sees overruns of smem bytes */
  if (posix_memalign(&dynamic, 64, smem ? smem : 1) != 0)
    return fail(cudaErrorLaunchOutOfResources);
  S.n = static_cast<unsigned>(threads);
  S.run = run;
  S.args = args;
  block.dim = blk;
  block.grid = grid;
  block.dynamic_shared = static_cast<unsigned char *>(dynamic);
  unsigned long long parity = S.launches++;
  bool ok = true;
  {
    device_access open;
    open.open_pointed(params, params_bytes);
    for (unsigned z = 0; ok && z < grid.z; z++)
      for (unsigned y = 0; ok && y < grid.y; y++)
        for (unsigned x = 0; ok && x < grid.x; x++) {
          block.idx = uint3{x, y, z};
          memset(dynamic, 0xFF, smem); /* shared memory starts as garbage: NaN */
          ok = run_block(((parity + x + y + z) & 1u) != 0);
        }
    if (ok && !open.redzones_intact(name))
      fail_async(cudaErrorIllegalAddress);
  }
  if (!ok)
    report_deadlock(name);
  free(dynamic);
  self = nullptr;
  S.cur = nullptr;
  if (!ok) {
    fail_async(cudaErrorLaunchFailure);
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

} /* namespace tg_simt */
